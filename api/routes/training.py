"""Training jobs (admin keys): submit a job for a collection's feedback, follow it, cancel it. Jobs run on the
task queue's workers (`citeloop worker`), never in the API process."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from api.deps import Admin, ServicesDep, reach
from api.errors import ERRORS
from api.schemas import ErrorResponse, JobCreate, JobOut
from feedback.jobs import JobInfo, JobNotFound, cancel_job, get_job, list_jobs, submit_job

router = APIRouter(tags=["training"])
CONFLICT = {409: {"model": ErrorResponse}}


@router.post("/v1/training/jobs", response_model=JobOut, status_code=202, responses=ERRORS | CONFLICT)
async def create_job(body: JobCreate, caller: Admin, services: ServicesDep) -> JobOut:
    reach(caller, body.collection)
    options = body.options.model_dump(exclude_none=True)
    return job_out(await run_in_threadpool(submit_job, body.kind, body.collection, caller.name, services.settings, "api", options))


@router.get("/v1/training/jobs", response_model=list[JobOut], responses=ERRORS)
def get_jobs(
    caller: Admin, services: ServicesDep, collection: Annotated[str | None, Query()] = None, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[JobOut]:
    if collection is not None:
        reach(caller, collection)
    return [job_out(j) for j in list_jobs(services.settings, collection, limit) if caller.reaches(j.collection)]


@router.get("/v1/training/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
def read_job(job_id: str, caller: Admin, services: ServicesDep) -> JobOut:
    return job_out(_reachable(job_id, caller, services))


@router.post("/v1/training/jobs/{job_id}/cancel", response_model=JobOut, responses=ERRORS | CONFLICT)
def cancel(job_id: str, caller: Admin, services: ServicesDep) -> JobOut:
    _reachable(job_id, caller, services)
    return job_out(cancel_job(job_id, services.settings))


def _reachable(job_id: str, caller, services) -> JobInfo:
    job = get_job(job_id, services.settings)
    if not caller.reaches(job.collection):
        raise JobNotFound(f"no training job '{job_id}'")
    return job


def job_out(job: JobInfo) -> JobOut:
    return JobOut(
        id=job.id, collection=job.collection, kind=job.kind, status=job.status, trigger=job.trigger, requested_by=job.requested_by,
        options=job.options, progress=job.progress, log=job.log, cancel_requested=job.cancel_requested, snapshot_id=job.snapshot_id,
        version_id=job.version_id, result=job.result, error=job.error, created_at=job.created_at.isoformat(),
        started_at=job.started_at.isoformat() if job.started_at else None, finished_at=job.finished_at.isoformat() if job.finished_at else None,
    )
