"""eval_sets.qa_rows: an uploaded set's questions with reference answers (or none: unanswerable), the
generator gate's evaluation questions

Revision ID: 0009
Revises: 0008
"""

from alembic import op
import sqlalchemy as sa


revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("eval_sets") as batch:
        batch.add_column(sa.Column("qa_rows", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("eval_sets") as batch:
        batch.drop_column("qa_rows")
