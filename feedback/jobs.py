"""Training jobs off the request path: a `training_jobs` row the API reports, run by a huey worker.

huey carries each job (SQLite storage under DATA_DIR by default, Redis with CITELOOP_QUEUE_URL=redis://...); the
row holds what the API shows: status, progress, the latest log lines, the snapshot, the candidate, its gate.
Lifecycle: queued -> running -> succeeded | failed | cancelled. One unfinished job per collection and kind (the
database refuses a second). A running job's worker writes a heartbeat; a job whose worker is gone (its process
dead on this host, or no heartbeat for CITELOOP_JOB_STALE_S) is marked failed with that reason, so a killed
worker never leaves a job `running`, and the registry is only changed by a job that finished its gate.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
import typing
import uuid
from collections import deque
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from citeloop.config import Settings, get_settings
from citeloop.db import Collection, FeedbackRecord, TrainingJob, as_utc, get_collection, session_scope, utcnow
from citeloop.errors import NotFoundError
from feedback.cross_encoder_trainer import RerankerTrainingArgs
from feedback.reward import RewardTrainingArgs
from feedback.train_generator import GeneratorTrainingArgs

log = logging.getLogger("citeloop.jobs")

UNFINISHED = ("queued", "running")
LOG_LINES = 50
# Per job kind: the trainer's arguments, and the options a job request may set (the rest keep their defaults).
TRAINING_ARGS = {"reranker": RerankerTrainingArgs, "generator": GeneratorTrainingArgs, "reward": RewardTrainingArgs}
JOB_OPTIONS = {
    "reranker": ("epochs", "max_steps", "batch_size", "learning_rate", "hard_negatives", "max_positives_per_query", "max_tokens", "seed"),
    "generator": (
        "epochs", "max_steps", "batch_size", "gradient_accumulation", "learning_rate", "beta", "lora_rank", "max_length", "bf16", "seed",
        "samples", "sample_temperature",
    ),
    "reward": ("epochs", "max_steps", "batch_size", "learning_rate", "seed"),
}
JOB_KINDS = tuple(JOB_OPTIONS)


class JobError(ValueError):
    """A job that cannot be submitted or changed as asked."""


class JobConflict(JobError):
    """A job of that kind is already queued or running for the collection, or the job has finished."""


class JobNotFound(NotFoundError):
    pass


class JobCancelled(Exception):
    """Raised inside a running job when its cancellation was requested."""


@dataclass(frozen=True)
class JobInfo:
    id: str
    collection: str
    kind: str
    status: str
    trigger: str
    requested_by: str
    options: dict[str, Any]
    progress: float
    log: list[str]
    worker: str | None
    cancel_requested: bool
    snapshot_id: str | None
    version_id: str | None
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None


def _info(row: TrainingJob, collection: str) -> JobInfo:
    return JobInfo(**{f.name: getattr(row, f.name) for f in fields(JobInfo) if f.name != "collection"}, collection=collection)


@lru_cache(maxsize=4)
def _queue(url: str | None, data_dir: str):
    """The huey instance for a queue location, with the job task registered on it."""
    if url and url.startswith("redis://"):
        from huey import RedisHuey

        queue = RedisHuey("citeloop", url=url)
    else:
        from huey import SqliteHuey

        os.makedirs(data_dir, exist_ok=True)
        queue = SqliteHuey("citeloop", filename=os.path.join(data_dir, "queue.db"))
    queue.run_training_job = queue.task(name="run_training_job", retries=0)(run_job)
    return queue


def job_queue(settings: Settings):
    return _queue(settings.queue_url, str(settings.data_dir.resolve()))


def check_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(JOB_OPTIONS[kind]))
    if unknown:
        raise JobError(f"unknown training option(s) {', '.join(unknown)}; a {kind} job may set {', '.join(JOB_OPTIONS[kind])}")
    hints = typing.get_type_hints(TRAINING_ARGS[kind])
    for name, value in options.items():
        allowed = typing.get_args(hints[name]) or (hints[name],)  # `bool | None`: either
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):  # True is an int too
            raise JobError(f"training option '{name}' must be {' or '.join('null' if t is type(None) else 'a ' + t.__name__ for t in allowed)}")
    return dict(options)


def submit_job(
    kind: str, collection: str, requested_by: str, settings: Settings, trigger: str = "api", options: dict[str, Any] | None = None
) -> JobInfo:
    """Record a queued job and put it on the queue. Checks first that the collection's feedback makes a training
    set (TrainingSetError says why not) and that no job of that kind is unfinished for it (JobConflict)."""
    from feedback.pairs import build_rating_set, check_pair_feedback
    from feedback.trainset import build_training_set

    if kind not in JOB_KINDS:
        raise JobError(f"unknown job kind '{kind}'; one of {', '.join(JOB_KINDS)}")
    options = check_options(kind, options or {})
    reap_stale_jobs(settings)
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    with session_scope(settings) as session:
        # The same gates the job applies, without scrubbing (it does not change what counts).
        if kind == "reranker":
            build_training_set(session, collection, lambda text: text, settings.eval_holdout, settings.training_min_queries)
        elif kind == "generator":
            check_pair_feedback(session, collection, settings.eval_holdout, settings.training_min_pairs, sampling=options.get("samples", 0) > 0)
        else:
            build_rating_set(session, collection, lambda text: text, settings.eval_holdout, settings.training_min_pairs)
        row = TrainingJob(
            id=job_id, collection_id=get_collection(session, collection).id, kind=kind, status="queued", trigger=trigger,
            requested_by=requested_by, options=options, progress=0.0, log=[f"{utcnow():%H:%M:%S} queued by {requested_by} ({trigger})"],
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            other = session.scalar(
                select(TrainingJob.id).where(TrainingJob.collection_id == row.collection_id, TrainingJob.kind == kind, TrainingJob.status.in_(UNFINISHED))
            )
            raise JobConflict(f"a {kind} job for collection '{collection}' is already queued or running ({other}); cancel it or wait") from None
    task = job_queue(settings).run_training_job(job_id)
    with session_scope(settings) as session:
        session.get(TrainingJob, job_id).queue_task_id = task.id
        return _info(session.get(TrainingJob, job_id), collection)


def get_job(job_id: str, settings: Settings) -> JobInfo:
    reap_stale_jobs(settings)
    with session_scope(settings) as session:
        found = session.execute(select(TrainingJob, Collection.name).join(Collection).where(TrainingJob.id == job_id)).first()
        if found is None:
            raise JobNotFound(f"no training job '{job_id}'")
        return _info(*found)


def list_jobs(settings: Settings, collection: str | None = None, limit: int = 50) -> list[JobInfo]:
    reap_stale_jobs(settings)
    with session_scope(settings) as session:
        query = select(TrainingJob, Collection.name).join(Collection).order_by(TrainingJob.created_at.desc()).limit(limit)
        if collection:
            query = query.where(Collection.name == collection)
        return [_info(row, name) for row, name in session.execute(query).all()]


def cancel_job(job_id: str, settings: Settings) -> JobInfo:
    """A queued job is cancelled at once (and revoked from the queue); a running one stops at its next training
    step and then reads `cancelled`."""
    with session_scope(settings) as session:
        row = session.get(TrainingJob, job_id, with_for_update=True)
        if row is None:
            raise JobNotFound(f"no training job '{job_id}'")
        if row.status not in UNFINISHED:
            raise JobConflict(f"training job '{job_id}' has finished ({row.status}); nothing to cancel")
        if row.status == "queued":
            _finish(row, "cancelled", "cancelled before it started")
            if row.queue_task_id:
                job_queue(settings).revoke_by_id(row.queue_task_id)
        else:
            row.cancel_requested = True
            row.log = [*row.log, f"{utcnow():%H:%M:%S} cancellation requested"][-LOG_LINES:]
    return get_job(job_id, settings)


def reap_stale_jobs(settings: Settings) -> int:
    """Mark running jobs whose worker is gone as failed; returns how many."""
    host = socket.gethostname()
    stale_before = utcnow() - timedelta(seconds=settings.job_stale_s)
    reaped = 0
    with session_scope(settings) as session:
        for row in session.scalars(select(TrainingJob).where(TrainingJob.status == "running").with_for_update()):
            worker_host, _, pid = (row.worker or "").rpartition(":")
            dead = worker_host == host and pid.isdigit() and not _alive(int(pid))
            beat = row.heartbeat_at or row.started_at
            silent = beat is not None and as_utc(beat) < stale_before
            if dead or silent:
                why = f"worker {row.worker} is no longer running" if dead else f"no heartbeat from worker {row.worker} since {beat:%H:%M:%S}"
                _finish(row, "failed", f"the job stopped mid-run: {why}; the active models were not changed")
                reaped += 1
    return reaped


def maybe_trigger(collection: str, settings: Settings) -> JobInfo | None:
    """Queue a reranker job when CITELOOP_TRAINING_AUTO_EVENTS (> 0) usable feedback events arrived for the
    collection since its last job, and none is unfinished; None otherwise."""
    threshold = settings.training_auto_events
    if threshold <= 0:
        return None
    from feedback.trainset import CURATOR_KINDS, VOTE_KINDS, TrainingSetError

    with session_scope(settings) as session:
        cid = get_collection(session, collection).id
        last = session.scalar(select(func.max(TrainingJob.created_at)).where(TrainingJob.collection_id == cid, TrainingJob.kind == "reranker"))
        unfinished = session.scalar(
            select(func.count()).select_from(TrainingJob).where(TrainingJob.collection_id == cid, TrainingJob.status.in_(UNFINISHED))
        )
        query = select(func.count()).select_from(FeedbackRecord).where(
            FeedbackRecord.collection_id == cid, FeedbackRecord.kind.in_([*CURATOR_KINDS, *VOTE_KINDS])
        )
        if last is not None:
            query = query.where(FeedbackRecord.created_at > last)
        new_events = session.scalar(query)
    if unfinished or new_events < threshold:
        return None
    try:
        return submit_job("reranker", collection, "auto", settings, trigger="auto")
    except (JobConflict, TrainingSetError) as exc:  # raced another trigger, or the feedback is not usable yet
        log.info("no automatic job for '%s': %s", collection, exc)
        return None


# --- the worker side ----------------------------------------------------------------------------------------------


class JobReporter:
    """What a running job reports: progress, log lines, and whether it was asked to stop. A thread writes it to
    the job's row (with a heartbeat) every CITELOOP_JOB_HEARTBEAT_S."""

    def __init__(self, job_id: str, settings: Settings):
        self.job_id, self.settings = job_id, settings
        self.progress = 0.0
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def line(self, message: str) -> None:
        with self._lock:
            self.lines.append(f"{utcnow():%H:%M:%S} {message}")

    def stage(self, message: str, progress: float) -> None:
        self.progress = max(self.progress, progress)
        self.line(message)
        if self.cancelled.is_set():
            raise JobCancelled()

    def training_callback(self, start: float, end: float):
        """A transformers TrainerCallback: progress from `start` to `end` over the training steps; stops on cancel."""
        from transformers import TrainerCallback

        reporter = self

        class Progress(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.max_steps:
                    reporter.progress = start + (end - start) * state.global_step / state.max_steps
                if state.global_step % 10 == 0 or state.global_step == state.max_steps:
                    reporter.line(f"training step {state.global_step}/{state.max_steps}")
                if reporter.cancelled.is_set():
                    raise JobCancelled()

        return Progress()

    def flush(self) -> None:
        with self._lock:
            lines = list(self.lines)
        with session_scope(self.settings) as session:
            row = session.get(TrainingJob, self.job_id)
            row.progress, row.heartbeat_at = round(self.progress, 4), utcnow()
            row.log = (row.log + [line for line in lines if line not in row.log])[-LOG_LINES:]
            if row.cancel_requested:
                self.cancelled.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.job_heartbeat_s):
            try:
                self.flush()
            except Exception:  # a database hiccup must not kill the job; the next beat retries
                log.exception("heartbeat of %s failed", self.job_id)

    def __enter__(self) -> JobReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_job(job_id: str, settings: Settings | None = None) -> JobInfo:
    """Run a queued job in this process: claim it, train from feedback, gate, promote if the gate passed."""
    from feedback.generator_loop import train_generator_from_feedback
    from feedback.reranker_loop import train_from_feedback
    from feedback.reward import train_reward_from_feedback

    settings = settings or get_settings()
    with session_scope(settings) as session:
        row = session.get(TrainingJob, job_id, with_for_update=True)
        if row is None or row.status != "queued":  # cancelled (or claimed) meanwhile
            return get_job(job_id, settings) if row else None
        row.status, row.started_at, row.heartbeat_at = "running", utcnow(), utcnow()
        row.worker = f"{socket.gethostname()}:{os.getpid()}"
        collection = session.get(Collection, row.collection_id).name
        kind, args = row.kind, replace(TRAINING_ARGS[row.kind](), **row.options)
    train = {"reranker": train_from_feedback, "generator": train_generator_from_feedback, "reward": train_reward_from_feedback}[kind]
    reporter = JobReporter(job_id, settings)
    status, error, result, version_id, snapshot_id = "failed", None, None, None, None
    with reporter:
        try:
            reporter.stage(f"started on {socket.gethostname()}:{os.getpid()}", 0.01)
            report = train(collection, args, settings, promote_if_better=True, actor=f"job:{job_id}", reporter=reporter)
            version_id, snapshot_id = report.version.id, report.version.snapshot_id
            result = {"metrics": report.version.metrics, "promoted": report.promoted, "gate": report.version.metrics.get("gate")}
            status = "succeeded"
            reporter.stage(f"{'promoted' if report.promoted else 'not promoted'}: {report.decision.reason}", 1.0)
        except JobCancelled:
            status, error = "cancelled", "cancelled while running; the active models were not changed"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            reporter.line(error)
            log.error("training job %s failed:\n%s", job_id, traceback.format_exc())
    reporter.flush()
    with session_scope(settings) as session:
        row = session.get(TrainingJob, job_id)
        row.version_id, row.snapshot_id, row.result = version_id, snapshot_id, result
        _finish(row, status, error)
    return get_job(job_id, settings)


def _finish(row: TrainingJob, status: str, error: str | None) -> None:
    row.status, row.error, row.finished_at = status, error, utcnow()
    if status == "succeeded":
        row.progress = 1.0
    row.log = [*row.log, f"{utcnow():%H:%M:%S} {status}" + (f": {error}" if error else "")][-LOG_LINES:]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
