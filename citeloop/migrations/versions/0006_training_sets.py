"""training from feedback: opt-outs, training-set snapshots, evaluation sets, erasure marks on models, training jobs

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UNFINISHED = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    for table in ("collections", "api_keys"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("training_opt_out", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("data_erased_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "training_snapshots",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("dropped", sa.JSON(), nullable=False),
        sa.Column("first_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("erased_rows", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_training_snapshots_collection_id", "training_snapshots", ["collection_id"])
    op.create_table(
        "eval_sets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("queries", sa.JSON(), nullable=False),
        sa.Column("qrels", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("collection_id", "name", name="uq_eval_sets_collection_name"),
    )

    op.create_table(
        "training_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False, server_default="0"),
        sa.Column("log", sa.JSON(), nullable=False),
        sa.Column("queue_task_id", sa.String(length=64), nullable=True),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("snapshot_id", sa.String(length=32), nullable=True),
        sa.Column("version_id", sa.String(length=32), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_training_jobs_collection_kind", "training_jobs", ["collection_id", "kind"])
    op.create_index(
        "uq_training_jobs_one_unfinished", "training_jobs", ["collection_id", "kind"], unique=True,
        sqlite_where=UNFINISHED, postgresql_where=UNFINISHED,
    )


def downgrade() -> None:
    op.drop_index("uq_training_jobs_one_unfinished", "training_jobs")
    op.drop_index("ix_training_jobs_collection_kind", "training_jobs")
    op.drop_table("training_jobs")
    op.drop_table("eval_sets")
    op.drop_index("ix_training_snapshots_collection_id", "training_snapshots")
    op.drop_table("training_snapshots")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("data_erased_at")
    for table in ("api_keys", "collections"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("training_opt_out")
