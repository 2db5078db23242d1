"""review copy: the blobs of a video's review copy, made while a review-mode job detects it

Revision ID: review_copy
Revises: roles
"""

import sqlalchemy as sa
from alembic import op

revision = "review_copy"
down_revision = "roles"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("review_copy", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("review_copy")
