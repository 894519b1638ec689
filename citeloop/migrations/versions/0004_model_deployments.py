"""model deployment history; at most one active model version per collection and kind

Revision ID: 0004
Revises: 0003

An existing database gets its history rebuilt from what it kept: each promoted version's last promotion
(`promoted_at`, in that order; `gate_passed` where its recorded gate passed, else `forced`), then the rollbacks
the earlier registry did not record, so that the history ends at the version active now. Where two versions of a
collection and kind were active, the one promoted last stays active, before the unique index is built.
"""

from datetime import datetime, timezone
from itertools import groupby

from alembic import op
import sqlalchemy as sa


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

IS_ACTIVE = sa.text("status = 'active'")
UNRECORDED = "unrecorded"  # the actor of a deployment made before the history existed

versions = sa.table(
    "model_versions",
    sa.column("id", sa.String),
    sa.column("collection_id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("status", sa.String),
    sa.column("metrics", sa.JSON),
    sa.column("promoted_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    deployments = op.create_table(
        "model_deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("from_version", sa.String(length=32), nullable=True),
        sa.Column("to_version", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["from_version"], ["model_versions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["to_version"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_deployments_collection_kind", "model_deployments", ["collection_id", "kind"])
    connection = op.get_bind()
    promoted = connection.execute(
        sa.select(versions)
        .where(versions.c.promoted_at.is_not(None))
        .order_by(versions.c.collection_id, versions.c.kind, versions.c.promoted_at, versions.c.id)
    ).all()
    rows = []
    for (collection_id, kind), group in groupby(promoted, key=lambda v: (v.collection_id, v.kind)):
        group = list(group)
        active = [v.id for v in group if v.status == "active"]
        for extra in active[:-1]:
            connection.execute(sa.update(versions).where(versions.c.id == extra).values(status="retired"))
        rows += _history(collection_id, kind, group, active[-1] if active else None)
    if rows:
        op.bulk_insert(deployments, rows)
    op.create_index(
        "uq_model_versions_one_active", "model_versions", ["collection_id", "kind"],
        unique=True, sqlite_where=IS_ACTIVE, postgresql_where=IS_ACTIVE,
    )


def _history(collection_id: int, kind: str, promoted: list, active: str | None) -> list[dict]:
    """Promotions in order, then rollbacks (dated now) until the version on top is the active one."""
    rows, stack = [], []
    for version in promoted:
        passed = ((version.metrics or {}).get("gate") or {}).get("passed") is True
        rows.append(_row(collection_id, kind, stack[-1] if stack else None, version.id, "gate_passed" if passed else "forced", version.promoted_at))
        stack.append(version.id)
    now = datetime.now(timezone.utc)
    while stack and stack[-1] != active:
        undone = stack.pop()
        rows.append(_row(collection_id, kind, undone, stack[-1] if stack else None, "rollback", now))
    return rows


def _row(collection_id: int, kind: str, from_version: str | None, to_version: str | None, reason: str, at: datetime) -> dict:
    return {
        "collection_id": collection_id, "kind": kind, "from_version": from_version, "to_version": to_version,
        "reason": reason, "actor": UNRECORDED, "deployed_at": at,
    }


def downgrade() -> None:
    op.drop_index("uq_model_versions_one_active", table_name="model_versions")
    op.drop_index("ix_model_deployments_collection_kind", table_name="model_deployments")
    op.drop_table("model_deployments")
