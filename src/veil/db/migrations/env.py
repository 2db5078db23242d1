"""Alembic environment: uses the connection handed over by `veil.db.session.upgrade`,
or VEIL_DATABASE_URL / the default SQLite file when run with the `alembic` command."""

from alembic import context

from veil.db.models import Base

target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=connection.dialect.name == "sqlite"
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from veil.db.session import make_engine
    from veil.settings import Settings

    with make_engine(Settings().db_url).begin() as conn:
        _run(conn)
