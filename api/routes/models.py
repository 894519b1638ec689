"""The model registry (admin keys): versions with their figures and deployment history, promotion through the
gate, rollback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from api.deps import Admin, ServicesDep, reach
from api.errors import ERRORS, ApiError
from api.schemas import DeploymentOut, ErrorResponse, ModelOut, ModelsOut, PromoteRequest
from citeloop.registry import RegistryError, VersionInfo, deployment_history, get_version, list_versions

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelsOut, responses=ERRORS)
def get_models(
    caller: Admin, services: ServicesDep, collection: Annotated[str | None, Query()] = None, kind: Annotated[str | None, Query()] = None
) -> ModelsOut:
    if collection is not None:
        reach(caller, collection)
    versions = [v for v in list_versions(services.settings, collection=collection, kind=kind) if caller.reaches(v.collection)]
    pairs = sorted({(v.collection, v.kind) for v in versions})
    history = [d for c, k in pairs for d in deployment_history(c, k, services.settings)]
    history.sort(key=lambda d: d.deployed_at)
    return ModelsOut(
        models=[model_out(v) for v in versions],
        history=[
            DeploymentOut(collection=d.collection, kind=d.kind, from_version=d.from_version, to_version=d.to_version, reason=d.reason, actor=d.actor, deployed_at=d.deployed_at.isoformat())
            for d in history
        ],
    )


@router.post("/v1/models/{version_id}/promote", response_model=ModelOut, responses=ERRORS | {409: {"model": ErrorResponse}})
async def promote_model(version_id: str, caller: Admin, services: ServicesDep, body: PromoteRequest | None = None) -> ModelOut:
    """Gate the version against what serves now (on its evaluation queries) and promote it if it passes, or with force."""
    from citeloop.registry import promote, record_metrics
    from feedback.gates import regate
    from feedback.reranker_loop import gate_record

    version = _reachable(version_id, caller, services)
    if version.status == "active":
        raise ApiError(409, "conflict", f"model version '{version_id}' is already active")
    decision = await run_in_threadpool(regate, version, services.settings)
    record_metrics(version_id, {"gate": gate_record(decision)}, services.settings)
    force = body.force if body else False
    return model_out(promote(version_id, services.settings, actor=caller.name, force=force))


@router.post("/v1/models/{version_id}/rollback", response_model=ModelOut | None, responses=ERRORS)
def rollback_model(version_id: str, caller: Admin, services: ServicesDep) -> ModelOut | None:
    """Roll back the active version `version_id`: the version that served before it serves again (the response),
    or none (null: the stage below serves)."""
    from citeloop.registry import rollback

    version = _reachable(version_id, caller, services)
    if version.status != "active":
        raise ApiError(409, "conflict", f"model version '{version_id}' is not active ({version.status}); only the active version is rolled back")
    restored = rollback(version.collection, version.kind, services.settings, actor=caller.name)  # type: ignore[arg-type]
    return model_out(restored) if restored else None


def _reachable(version_id: str, caller, services) -> VersionInfo:
    try:
        version = get_version(version_id, services.settings)
    except RegistryError:
        version = None
    if version is None or not caller.reaches(version.collection):
        raise ApiError(404, "not_found", f"no model version '{version_id}'")
    return version


def model_out(v: VersionInfo) -> ModelOut:
    return ModelOut(
        id=v.id, collection=v.collection, kind=v.kind, status=v.status, parent_id=v.parent_id, snapshot_id=v.snapshot_id,
        artifact_sha256=v.artifact_sha256, metrics=v.metrics, created_at=v.created_at.isoformat(),
        promoted_at=v.promoted_at.isoformat() if v.promoted_at else None, data_erased_at=v.data_erased_at.isoformat() if v.data_erased_at else None,
    )

