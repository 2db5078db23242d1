"""segments: video_segments (one row per segment of a long video task)

Revision ID: segments
Revises: admin_panel
"""

import sqlalchemy as sa
from alembic import op

revision = "segments"
down_revision = "admin_panel"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "video_segments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("window", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("blob", sa.String(length=300), nullable=True),
        sa.Column("detections", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("video_segments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_video_segments_task_id"), ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("video_segments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_video_segments_task_id"))
    op.drop_table("video_segments")
