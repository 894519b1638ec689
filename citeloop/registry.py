"""Model registry: trained versions per collection and kind, artifacts under DATA_DIR/models, one active.

A candidate becomes active only through `promote`: after its promotion gate (`gate_decision`) passed, or forced.
Every promotion and rollback is a row of the deployment history; `rollback` undoes the latest deployment not yet
undone, so the version active before it serves again (or none: the stage below serves). The database refuses a
second active version. Servers pick changes up on their next request (`active_version` is one indexed query).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from citeloop.config import Settings, get_settings
from citeloop.db import Collection, Deployment, ModelVersion, get_collection, session_scope, utcnow
from citeloop.errors import UnknownCollectionError
from citeloop.files import artifact_sha256

ModelKind = Literal["reranker", "generator", "reward"]
MODEL_KINDS: tuple[ModelKind, ...] = ("reranker", "generator", "reward")
DeploymentReason = Literal["gate_passed", "forced", "rollback"]


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
    data_erased_at: datetime | None = None  # an erasure removed rows of its training snapshot since it was trained


@dataclass(frozen=True)
class DeploymentInfo:
    """One change of the active version: `from_version` -> `to_version` (None: no version served / serves)."""

    collection: str
    kind: str
    from_version: str | None
    to_version: str | None
    reason: DeploymentReason
    actor: str
    deployed_at: datetime


def _info(row: ModelVersion, collection: str) -> VersionInfo:
    return VersionInfo(
        row.id, collection, row.kind, row.status, row.parent_id, Path(row.path), row.artifact_sha256,
        row.snapshot_id, dict(row.params or {}), dict(row.metrics or {}), row.created_at, row.promoted_at, row.data_erased_at,
    )


def models_dir(settings: Settings) -> Path:
    return settings.data_dir / "models"


@contextmanager
def staging_dir(settings: Settings) -> Iterator[Path]:
    """A scratch directory beside the registry's artifacts (the same file system, so `register_candidate` moves a
    finished artifact instead of copying it), removed afterwards with whatever was not registered."""
    staging = models_dir(settings) / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=staging))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _collection_id(session: Session, name: str) -> int:
    try:
        return get_collection(session, name).id
    except UnknownCollectionError as exc:
        raise RegistryError(str(exc)) from exc


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


def promote(version_id: str, settings: Settings | None = None, *, actor: str = "cli", force: bool = False) -> VersionInfo:
    """Make a candidate (or a retired version) the active one of its collection and kind. A version whose recorded
    gate did not pass (or that has none) needs `force`, and its deployment is recorded as forced."""
    info = get_version(version_id, settings)
    if info.status == "active":
        raise RegistryError(f"model version '{version_id}' is already active")
    gate = info.metrics.get("gate") or {}
    if gate.get("passed") is not True and not force:
        why = f"its gate failed: {gate['reason']}" if gate.get("reason") else "it has no gate result"
        raise RegistryError(f"model version '{version_id}' has not passed the promotion gate ({why}); use --force to promote it anyway")
    verified_path(info)
    with session_scope(settings) as session:
        history = _History(session, info.collection, info.kind)
        row = session.get(ModelVersion, version_id)
        if row is history.active:  # promoted meanwhile by another caller
            raise RegistryError(f"model version '{version_id}' is already active")
        history.deploy(row, "gate_passed" if gate.get("passed") is True else "forced", actor)
        row.promoted_at = utcnow()
        return _info(row, info.collection)


def rollback(collection: str, kind: ModelKind, settings: Settings | None = None, *, actor: str = "cli") -> VersionInfo | None:
    """Undo the deployment of the active version: the version active before it was deployed serves again (its
    artifact digest checked first), or none (the stage below serves). Repeated rollbacks walk the history back
    like a stack: a deployment already undone is skipped."""
    with session_scope(settings) as session:
        history = _History(session, collection, kind)
        if history.active is None:
            raise RegistryError(f"collection '{collection}' has no active {kind} to roll back")
        previous = history.previous()
        if previous is not None:
            try:
                verified_path(_info(previous, collection))
            except CorruptArtifactError as exc:
                raise CorruptArtifactError(f"cannot roll back to '{previous.id}': {exc}; '{history.active.id}' stays active") from exc
        history.deploy(previous, "rollback", actor)
        return _info(previous, collection) if previous else None


def deployment_history(collection: str, kind: ModelKind, settings: Settings | None = None) -> list[DeploymentInfo]:
    """Every promotion and rollback of a collection's models of a kind, oldest first."""
    with session_scope(settings) as session:
        return [
            DeploymentInfo(collection, d.kind, d.from_version, d.to_version, d.reason, d.actor, d.deployed_at)
            for d in _History(session, collection, kind, lock=False).deployments
        ]


class _History:
    """The deployments and the active version of one collection and kind. `lock`: read with the collection row
    locked (PostgreSQL), so that concurrent promotions and rollbacks of it take turns."""

    def __init__(self, session: Session, collection: str, kind: str, lock: bool = True):
        self.session, self.kind = session, kind
        self.collection_id = _collection_id(session, collection)
        if lock:
            session.execute(select(Collection.id).where(Collection.id == self.collection_id).with_for_update())
        self.deployments = list(
            session.scalars(
                select(Deployment)
                .where(Deployment.collection_id == self.collection_id, Deployment.kind == kind)
                .order_by(Deployment.id)
            )
        )
        self.active = session.scalar(
            select(ModelVersion).where(
                ModelVersion.collection_id == self.collection_id, ModelVersion.kind == kind, ModelVersion.status == "active"
            )
        )

    def previous(self) -> ModelVersion | None:
        """The version that was active before the active one was deployed: the top of the stack of promotions
        that no rollback undid."""
        promotions: list[Deployment] = []
        for deployment in self.deployments:
            if deployment.reason == "rollback":
                if promotions:
                    promotions.pop()
            else:
                promotions.append(deployment)
        if not promotions or promotions[-1].from_version is None:
            return None
        return self.session.get(ModelVersion, promotions[-1].from_version)

    def deploy(self, version: ModelVersion | None, reason: DeploymentReason, actor: str) -> None:
        """Retire the active version, then activate `version` (flushed in that order: the database allows one
        active version) and record the change."""
        current = self.active
        if current is not None:
            current.status = "retired"
            self.session.flush()
        if version is not None:
            version.status = "active"
        self.session.add(
            Deployment(
                collection_id=self.collection_id, kind=self.kind, from_version=current.id if current else None,
                to_version=version.id if version else None, reason=reason, actor=actor,
            )
        )
        self.session.flush()
        self.active = version


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    candidate: dict[str, float]
    baseline: dict[str, float]
    baseline_name: str
    # The gated metric's gain over the baseline on the same queries (nDCG@10 for rerankers, answer F1 for
    # generators), and its paired bootstrap confidence interval.
    gain: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    # The stored evaluation runs the decision was made on (eval_runs ids): the answers or rankings compared.
    runs: dict[str, str] | None = None


# Per-query entries of a stage's scores (eval.retrieval.score_runs): the gate's inputs, not its summary.
PER_QUERY = ("per_query", "ranked")


def summary(scores: dict) -> dict:
    """A stage's mean metrics, without its per-query entries."""
    return {k: v for k, v in scores.items() if k not in PER_QUERY}


def paired_bootstrap(candidate: dict[str, float], baseline: dict[str, float], confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean per-query difference candidate - baseline over their shared queries, with its paired bootstrap
    confidence interval (scipy.stats.bootstrap, BCa, 9,999 resamples of the queries)."""
    import numpy as np
    from scipy.stats import bootstrap

    queries = sorted(set(candidate) & set(baseline))
    if not queries:
        raise RegistryError("no query is scored for both models: nothing to compare")
    diff = np.array([candidate[q] - baseline[q] for q in queries])
    if np.allclose(diff, diff[0], rtol=0, atol=1e-9):  # no spread to resample (one query, identical rankings or answers)
        return float(diff.mean()), float(diff.mean()), float(diff.mean())
    for method in ("BCa", "percentile"):  # BCa is undefined (NaN) on a sample that is nearly one value
        result = bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=9999, method=method, random_state=np.random.default_rng(seed))
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            break
    return float(diff.mean()), float(low), float(high)


def gate_decision(
    candidate: dict,
    baseline: dict,
    baseline_name: str,
    min_ndcg_gain: float,
    max_recall_drop: float,
    min_ci_lower: float | None = None,
    confidence: float = 0.95,
) -> GateDecision:
    """Promote only a candidate that beats the baseline on nDCG@10 by the margin without losing Recall@100 and,
    when both carry per-query nDCG@10 (`per_query`) and `min_ci_lower` is set, whose gain's paired bootstrap
    interval lies above `min_ci_lower`: a lucky split of a few queries does not promote."""
    per_query = candidate.get("per_query"), baseline.get("per_query")
    candidate, baseline = summary(candidate), summary(baseline)
    gain = candidate["ndcg@10"] - baseline["ndcg@10"]
    drop = baseline["recall@100"] - candidate["recall@100"]
    ci: dict = {"gain": round(gain, 4)}
    interval = ""
    if per_query[0] is not None and per_query[1] is not None:
        _, low, high = paired_bootstrap(per_query[0], per_query[1], confidence)
        ci |= {"ci_low": round(low, 4), "ci_high": round(high, 4), "confidence": confidence}
        interval = f" ({confidence:.0%} CI {low:+.4f} .. {high:+.4f})"

    def decided(passed: bool, reason: str) -> GateDecision:
        return GateDecision(passed, reason, candidate, baseline, baseline_name, **ci)

    head = f"nDCG@10 {candidate['ndcg@10']:.4f} vs {baseline_name} {baseline['ndcg@10']:.4f}: gain {gain:+.4f}{interval}"
    if gain < min_ndcg_gain:
        return decided(False, f"{head} < required {min_ndcg_gain:+.4f}")
    if min_ci_lower is not None and "ci_low" in ci and not ci["ci_low"] > min_ci_lower:  # a NaN bound fails too
        return decided(False, f"{head}: the interval's lower bound is not above {min_ci_lower:+.4f}")
    if drop > max_recall_drop:
        return decided(False, f"{head}; Recall@100 {candidate['recall@100']:.4f} vs {baseline['recall@100']:.4f}: drop {drop:.4f} > tolerance {max_recall_drop:.4f}")
    return decided(True, f"{head}; Recall@100 {candidate['recall@100']:.4f} vs {baseline['recall@100']:.4f}")
