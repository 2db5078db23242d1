"""jobs.input_sha256: the SHA-256 of the input as priced, checked by the worker before processing

Revision ID: upload_guard
Revises: callbacks_cancel
"""

import sqlalchemy as sa
from alembic import op

revision = "upload_guard"
down_revision = "callbacks_cancel"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("input_sha256")
