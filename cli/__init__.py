"""The `citeloop` command line: one command per job, one module per verb group.

Each module imports only typer and rich at the top; a command imports what it runs when it runs, so `citeloop
--help` and every command start without loading models, indexes or the web stack.
"""

import typer

import citeloop  # noqa: F401  (offline switches first)
from cli import ask, evalsets, evaluate, feedback, ingest, jobs, keys, models, serve

app = typer.Typer(help="citeloop: grounded question answering over your documents.", no_args_is_help=True)
app.command()(ingest.ingest)
app.command("delete-document")(ingest.delete_document)
app.command()(ask.search)
app.command()(ask.ask)
app.command()(serve.serve)
app.command()(jobs.worker)
app.add_typer(ingest.collections_app, name="collections")
app.add_typer(evaluate.eval_app, name="eval")
app.add_typer(models.train_app, name="train")
app.add_typer(models.models_app, name="models")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(feedback.feedback_app, name="feedback")
app.add_typer(evalsets.evalsets_app, name="evalsets")
app.add_typer(jobs.jobs_app, name="jobs")
