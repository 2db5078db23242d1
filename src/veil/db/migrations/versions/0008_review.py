"""review: detections documents per task, their per-file report, and render requests (detect once, render many)

Revision ID: review
Revises: segments_lease
"""

import sqlalchemy as sa
from alembic import op

revision = "review"
down_revision = "segments_lease"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("detections_blob", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("summary", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("render_pending", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("render_request", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("renders", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("renders")
        batch_op.drop_column("render_request")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("render_pending")
        batch_op.drop_column("summary")
        batch_op.drop_column("detections_blob")
