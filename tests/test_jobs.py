"""Training jobs on the real queue: huey's SQLite storage, a real `citeloop worker` process, the API over real
HTTP. Lifecycle: queued -> cancelled; queued -> running -> failed (bad data found at run time); -> succeeded with
a gated candidate; running -> failed when the worker is killed (never left `running`, the active model kept);
running -> cancelled. One unfinished job per collection and kind; other tenants' jobs are 404."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from api.client import CiteloopError, Client
from citeloop.catalog import set_collection_training_opt_out
from citeloop.config import Settings
from citeloop.keys import create_key
from citeloop.registry import active_version
from tests.conftest import REPO, judge_against_qrels
from tests.test_api_in_process import served

pytestmark = pytest.mark.slow
SMOKE = {"epochs": 1, "max_steps": 2, "batch_size": 4, "hard_negatives": 2, "max_tokens": 64}
LONG = SMOKE | {"max_steps": 400}  # runs for minutes: long enough to be killed or cancelled mid-run
TUNING = {"CITELOOP_RERANK_MAX_TOKENS": "64", "CITELOOP_RERANK_TOP_N": "10", "CITELOOP_JOB_HEARTBEAT_S": "0.5"}


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_beir):
    settings = Settings(data_dir=tmp_path_factory.mktemp("jobs") / "var", rerank_max_tokens=64, rerank_top_n=10, job_heartbeat_s=0.5)
    collection = judge_against_qrels(settings, tiny_beir)
    keys = {"admin": create_key("admin", "admin", ["*"], settings), "other": create_key("other", "admin", ["elsewhere"], settings)}
    with served(settings) as (base, _app, _loop):
        yield settings, collection, Client(base, keys["admin"]), Client(base, keys["other"])


class Worker:
    def __init__(self, settings: Settings, log_path):
        env = dict(os.environ, CITELOOP_DATA_DIR=str(settings.data_dir), **TUNING)
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "cli", "worker"], cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.log.close()


def wait_for(client: Client, job_id: str, done, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if done(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not get there in {timeout_s} s: {job}")


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def training(job: dict) -> bool:
    return any("training step" in line for line in job["log"])


def test_job_lifecycle_on_the_real_queue(site, tmp_path):
    settings, collection, admin, other = site
    # Queued with no worker running: a second job of the kind is refused, cancelling revokes the queued one.
    queued = admin.submit_job(collection, options=SMOKE)
    assert queued["status"] == "queued" and queued["requested_by"] == "admin"
    with pytest.raises(CiteloopError) as conflict:
        admin.submit_job(collection, options=SMOKE)
    assert conflict.value.status == 409 and queued["id"] in conflict.value.message
    with pytest.raises(CiteloopError) as hidden:
        other.job(queued["id"])
    assert hidden.value.status == 404
    assert admin.cancel_job(queued["id"])["status"] == "cancelled"
    with pytest.raises(CiteloopError) as again:
        admin.cancel_job(queued["id"])
    assert again.value.status == 409

    # A job whose collection opted out of training between submission and run fails with that reason.
    doomed = admin.submit_job(collection, options=SMOKE)
    set_collection_training_opt_out(collection, True, settings)
    worker = Worker(settings, tmp_path / "worker.log")
    try:
        failed = wait_for(admin, doomed["id"], finished)
        assert failed["status"] == "failed" and "opted out" in failed["error"]
        set_collection_training_opt_out(collection, False, settings)

        job = wait_for(admin, admin.submit_job(collection, options=SMOKE)["id"], finished)
        assert job["status"] == "succeeded", job
        assert job["version_id"] and job["snapshot_id"] and job["progress"] == 1.0 and training(job)
        gate = job["result"]["gate"]
        assert gate["baseline_name"] == "hybrid retrieval" and "ci_low" in gate
        assert job["result"]["promoted"] == gate["passed"]
        models = admin.models(collection)
        assert job["version_id"] in {m["id"] for m in models["models"]}
        serving = active_version(collection, "reranker", settings)

        # Killed mid-training: the job is failed with the reason, and what served keeps serving.
        long = wait_for(admin, admin.submit_job(collection, options=LONG)["id"], training)
        assert long["status"] == "running"
        worker.kill()
        dead = admin.job(long["id"])
        assert dead["status"] == "failed" and "no longer running" in dead["error"]
        assert active_version(collection, "reranker", settings) == serving

        # Cancelled mid-training by a new worker.
        worker = Worker(settings, tmp_path / "worker.log")
        long = wait_for(admin, admin.submit_job(collection, options=LONG)["id"], training)
        assert admin.cancel_job(long["id"])["cancel_requested"] is True
        stopped = wait_for(admin, long["id"], finished, timeout_s=120)
        assert stopped["status"] == "cancelled" and stopped["version_id"] is None
        assert active_version(collection, "reranker", settings) == serving
    finally:
        worker.kill()
    assert [j["status"] for j in admin.jobs(collection)][:5] == ["cancelled", "failed", "succeeded", "failed", "cancelled"]


def test_bad_job_requests_are_4xx(site):
    _, collection, admin, other = site
    for call, status in (
        (lambda: admin.submit_job("no-such-collection"), 404),
        (lambda: other.submit_job(collection), 404),
        (lambda: admin.submit_job(collection, kind="generator"), 422),
        (lambda: admin.submit_job(collection, options={"epochs": 0}), 422),
        (lambda: admin.job("job-nope"), 404),
    ):
        with pytest.raises(CiteloopError) as error:
            call()
        assert error.value.status == status, error.value
