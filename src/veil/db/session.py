"""Engine and session setup for SQLite (WAL, busy timeout) and PostgreSQL (psycopg 3); migrations at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    """An Engine for `url`; plain `postgresql://` URLs use psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA busy_timeout=30000")  # writers wait for each other instead of failing
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (run at every start-up; idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":  # API servers and workers starting together migrate one at a time
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(8000801)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """Engine + session factory for `url`, schema migrated to head."""
    engine = make_engine(url)
    upgrade(engine)
    return engine, make_sessionmaker(engine)


def changed(session: Session, statement: Executable) -> int:
    """The rows an UPDATE or DELETE changed: the condition of a conditional write held for them (SQLAlchemy
    types `execute` as any Result; a DML statement's is a CursorResult, which counts them)."""
    return cast(CursorResult, session.execute(statement)).rowcount
