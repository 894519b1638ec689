"""answers.prompt, answers.prompt_format: the exact chat messages an answer was generated from, and their format

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("answers") as batch:
        batch.add_column(sa.Column("prompt", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("prompt_format", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("answers") as batch:
        batch.drop_column("prompt_format")
        batch.drop_column("prompt")
