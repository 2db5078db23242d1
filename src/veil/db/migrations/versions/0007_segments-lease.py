"""segments lease: a segment's own lease, progress and error (any Celery worker may run it)

Revision ID: segments_lease
Revises: segments
"""

import sqlalchemy as sa
from alembic import op

revision = "segments_lease"
down_revision = "segments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("video_segments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("progress", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("video_segments", schema=None) as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("error")
        batch_op.drop_column("progress")
