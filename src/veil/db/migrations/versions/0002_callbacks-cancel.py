"""callback_deliveries: one row per notification and callback URL, with its outcome

Revision ID: callbacks_cancel
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "callbacks_cancel"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "callback_deliveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("callback_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_callback_deliveries_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_callback_deliveries_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_callback_deliveries_key_id"), ["key_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_callback_deliveries_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("callback_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_callback_deliveries_status"))
        batch_op.drop_index(batch_op.f("ix_callback_deliveries_key_id"))
        batch_op.drop_index(batch_op.f("ix_callback_deliveries_job_id"))
        batch_op.drop_index(batch_op.f("ix_callback_deliveries_created_at"))
    op.drop_table("callback_deliveries")
