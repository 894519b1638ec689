"""Training job commands: `worker` (runs queued jobs) and `jobs submit|list|show|cancel`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.errors import reports_errors
from cli.output import console

jobs_app = typer.Typer(help="Training jobs on the task queue: submit, list, show, cancel.", no_args_is_help=True)


def worker() -> None:
    """Run training jobs from the task queue (huey) until stopped; jobs a dead worker left running are marked failed first."""
    from citeloop.config import get_settings
    from feedback.jobs import job_queue, reap_stale_jobs

    settings = get_settings()
    reaped = reap_stale_jobs(settings)
    if reaped:
        console.print(f"marked {reaped} job(s) of a stopped worker as failed")
    queue = job_queue(settings)
    console.print(f"citeloop worker: running training jobs from {settings.queue_url or settings.data_dir / 'queue.db'}")
    # One job at a time: training uses every core.
    queue.create_consumer(workers=1, worker_type="thread", periodic=False).run()


@jobs_app.command("submit")
@reports_errors()
def jobs_submit(
    collection: Annotated[str, typer.Argument(help="The collection whose feedback trains the model.")],
    kind: Annotated[str, typer.Option("--kind", help="Model kind.")] = "reranker",
) -> None:
    """Queue a training job (a running `citeloop worker` picks it up)."""
    from cli.models import cli_actor
    from citeloop.config import get_settings
    from feedback.jobs import submit_job

    job = submit_job(kind, collection, cli_actor(), get_settings(), trigger="cli")
    console.print(f"queued [bold]{job.id}[/] ({kind}, '{collection}')")


@jobs_app.command("list")
def jobs_list(collection: Annotated[Optional[str], typer.Option("--collection", "-c")] = None) -> None:
    """The latest training jobs with their state."""
    from citeloop.config import get_settings
    from feedback.jobs import list_jobs

    table = Table("job", "collection", "kind", "status", "progress", "by", "created", "candidate", "error")
    for j in list_jobs(get_settings(), collection):
        table.add_row(
            j.id, j.collection, j.kind, j.status, f"{j.progress:.0%}", j.requested_by, f"{j.created_at:%Y-%m-%d %H:%M}",
            j.version_id or "-", (j.error or "-")[:60],
        )
    console.print(table)


@jobs_app.command("show")
@reports_errors()
def jobs_show(job_id: Annotated[str, typer.Argument(help="Job id from `jobs list`.")]) -> None:
    """A job's state, gate decision and log tail."""
    from citeloop.config import get_settings
    from feedback.jobs import get_job

    j = get_job(job_id, get_settings())
    console.print(f"[bold]{j.id}[/] {j.kind} '{j.collection}': {j.status} ({j.progress:.0%}); snapshot {j.snapshot_id or '-'}, candidate {j.version_id or '-'}")
    if j.result and j.result.get("gate"):
        console.print(f"gate: {j.result['gate']['reason']}; promoted: {j.result['promoted']}", markup=False)
    if j.error:
        console.print(f"error: {j.error}", markup=False)
    for line in j.log:
        console.print(line, markup=False, highlight=False)


@jobs_app.command("cancel")
@reports_errors()
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="Job id from `jobs list`.")]) -> None:
    """Cancel a queued job, or stop a running one at its next training step."""
    from citeloop.config import get_settings
    from feedback.jobs import cancel_job

    j = cancel_job(job_id, get_settings())
    console.print(f"{j.id}: {j.status}{' (stops at its next step)' if j.status == 'running' else ''}")
