"""Model registry: trained versions per collection and kind, artifacts under DATA_DIR/models, one active.

A candidate becomes active only through `promote`, which the caller runs after the promotion gate
(`gate_decision`) passed; `rollback` re-activates the previously active version (or none: the stage below
serves). Servers pick the change up on their next request (`active_version` is one indexed query).
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from citeloop.config import Settings, get_settings
from citeloop.db import Collection, ModelVersion, session_scope, utcnow
from citeloop.files import artifact_sha256

ModelKind = Literal["reranker", "generator"]
MODEL_KINDS: tuple[ModelKind, ...] = ("reranker", "generator")


class RegistryError(RuntimeError):
    pass


class CorruptArtifactError(RegistryError):
    pass


@dataclass(frozen=True)
class VersionInfo:
    id: str
    collection: str
    kind: str
    status: str
    parent_id: str | None
    path: Path
    artifact_sha256: str
    snapshot_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime
    promoted_at: datetime | None


def _info(row: ModelVersion, collection: str) -> VersionInfo:
    return VersionInfo(
        row.id, collection, row.kind, row.status, row.parent_id, Path(row.path), row.artifact_sha256,
        row.snapshot_id, dict(row.params or {}), dict(row.metrics or {}), row.created_at, row.promoted_at,
    )


def models_dir(settings: Settings) -> Path:
    return settings.data_dir / "models"


def _collection_id(session: Session, name: str) -> int:
    collection_id = session.scalar(select(Collection.id).where(Collection.name == name))
    if collection_id is None:
        raise RegistryError(f"no collection named '{name}'")
    return collection_id


def register_candidate(
    artifact: Path,
    collection: str,
    kind: ModelKind,
    snapshot_id: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    parent_id: str | None = None,
    settings: Settings | None = None,
) -> VersionInfo:
    """Move a finished artifact directory into the registry and record it as a candidate."""
    settings = settings or get_settings()
    if kind not in MODEL_KINDS:
        raise RegistryError(f"unknown model kind '{kind}'")
    version_id = f"{kind[:3]}-{uuid.uuid4().hex[:12]}"
    target = models_dir(settings) / version_id
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(artifact), str(target))
    digest = artifact_sha256(target)
    with session_scope(settings) as session:
        row = ModelVersion(
            id=version_id, collection_id=_collection_id(session, collection), kind=kind, status="candidate",
            parent_id=parent_id, path=str(target.resolve()), artifact_sha256=digest, snapshot_id=snapshot_id,
            params=params, metrics=metrics,
        )
        session.add(row)
        session.flush()
        return _info(row, collection)


def get_version(version_id: str, settings: Settings | None = None, kind: str | None = None, collection: str | None = None) -> VersionInfo:
    with session_scope(settings) as session:
        found = session.execute(
            select(ModelVersion, Collection.name).join(Collection).where(ModelVersion.id == version_id)
        ).first()
        if found is None:
            raise RegistryError(f"no model version '{version_id}'")
        info = _info(found[0], found[1])
    if kind is not None and info.kind != kind:
        raise RegistryError(f"model version '{version_id}' is a {info.kind}, not a {kind}")
    if collection is not None and info.collection != collection:
        raise RegistryError(f"model version '{version_id}' belongs to collection '{info.collection}', not '{collection}'")
    return info


def verified_path(info: VersionInfo) -> Path:
    """The artifact directory, after checking it still has the digest recorded at registration."""
    if not info.path.is_dir() or artifact_sha256(info.path) != info.artifact_sha256:
        raise CorruptArtifactError(f"artifact of model version '{info.id}' at {info.path} is missing or altered")
    return info.path


def active_version(collection: str, kind: ModelKind, settings: Settings | None = None) -> VersionInfo | None:
    with session_scope(settings) as session:
        row = session.scalar(
            select(ModelVersion)
            .join(Collection)
            .where(Collection.name == collection, ModelVersion.kind == kind, ModelVersion.status == "active")
        )
        return _info(row, collection) if row else None


def list_versions(settings: Settings | None = None, collection: str | None = None, kind: str | None = None) -> list[VersionInfo]:
    with session_scope(settings) as session:
        query = select(ModelVersion, Collection.name).join(Collection).order_by(ModelVersion.created_at)
        if collection:
            query = query.where(Collection.name == collection)
        if kind:
            query = query.where(ModelVersion.kind == kind)
        return [_info(row, name) for row, name in session.execute(query).all()]


def record_metrics(version_id: str, metrics: dict[str, Any], settings: Settings | None = None) -> None:
    """Merge figures (a gate result, an evaluation) into a version's metrics."""
    with session_scope(settings) as session:
        row = session.get(ModelVersion, version_id)
        if row is None:
            raise RegistryError(f"no model version '{version_id}'")
        row.metrics = {**(row.metrics or {}), **metrics}


def promote(version_id: str, settings: Settings | None = None) -> VersionInfo:
    """Make a candidate (or a retired version) the active one of its collection and kind."""
    info = get_version(version_id, settings)
    if info.status == "active":
        raise RegistryError(f"model version '{version_id}' is already active")
    verified_path(info)
    with session_scope(settings) as session:
        row = session.get(ModelVersion, version_id, with_for_update=True)
        for current in session.scalars(
            select(ModelVersion).where(
                ModelVersion.collection_id == row.collection_id, ModelVersion.kind == row.kind, ModelVersion.status == "active"
            )
        ):
            current.status = "retired"
        row.status = "active"
        row.promoted_at = utcnow()
        session.flush()
        return _info(row, info.collection)


def rollback(collection: str, kind: ModelKind, settings: Settings | None = None) -> VersionInfo | None:
    """Retire the active version and re-activate the one promoted before it; None: no version serves now.
    Repeated rollbacks walk back through the promotion history."""
    with session_scope(settings) as session:
        collection_id = _collection_id(session, collection)
        versions = list(
            session.scalars(
                select(ModelVersion).where(ModelVersion.collection_id == collection_id, ModelVersion.kind == kind)
            )
        )
        active = next((v for v in versions if v.status == "active"), None)
        if active is None:
            raise RegistryError(f"collection '{collection}' has no active {kind} to roll back")
        active.status = "retired"
        # The version promoted before the active one (promotion times form the stack; a rollback keeps them).
        earlier = sorted(
            (
                v
                for v in versions
                if v.status == "retired" and v.promoted_at is not None and active.promoted_at is not None
                and _aware(v.promoted_at) < _aware(active.promoted_at)
            ),
            key=lambda v: _aware(v.promoted_at),
        )
        if not earlier:
            return None
        previous = earlier[-1]
        previous.status = "active"
        session.flush()
        return _info(previous, collection)


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns.
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    candidate: dict[str, float]
    baseline: dict[str, float]
    baseline_name: str


def gate_decision(
    candidate: dict[str, float],
    baseline: dict[str, float],
    baseline_name: str,
    min_ndcg_gain: float,
    max_recall_drop: float,
) -> GateDecision:
    """Promote only a candidate that beats the baseline on nDCG@10 by the margin without losing Recall@100."""
    gain = candidate["ndcg@10"] - baseline["ndcg@10"]
    drop = baseline["recall@100"] - candidate["recall@100"]
    if gain < min_ndcg_gain:
        reason = f"nDCG@10 {candidate['ndcg@10']:.4f} vs {baseline_name} {baseline['ndcg@10']:.4f}: gain {gain:+.4f} < required {min_ndcg_gain:+.4f}"
        return GateDecision(False, reason, candidate, baseline, baseline_name)
    if drop > max_recall_drop:
        reason = f"Recall@100 {candidate['recall@100']:.4f} vs {baseline_name} {baseline['recall@100']:.4f}: drop {drop:.4f} > tolerance {max_recall_drop:.4f}"
        return GateDecision(False, reason, candidate, baseline, baseline_name)
    reason = f"nDCG@10 {candidate['ndcg@10']:.4f} vs {baseline_name} {baseline['ndcg@10']:.4f} ({gain:+.4f}); Recall@100 {candidate['recall@100']:.4f} vs {baseline['recall@100']:.4f}"
    return GateDecision(True, reason, candidate, baseline, baseline_name)
