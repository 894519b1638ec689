"""How a command fails: `error: <message>` on stderr and exit code 1, never a traceback.

`reports_errors` turns the domain errors below (a mistake the user can fix: a bad file, an unknown name, a
missing model) into that message; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

import typer

from cli.output import err

# Domain error classes by the module that defines them. They are looked up in sys.modules, never imported here:
# an error of a module that was never imported cannot have been raised, and the CLI starts without loading the
# packages behind its commands.
DOMAIN_ERRORS: dict[str, tuple[str, ...]] = {
    "citeloop.errors": ("NotFoundError",),
    "citeloop.keys": ("KeyManagementError",),
    "citeloop.modelpkg": ("ModelPackageError",),
    "citeloop.registry": ("RegistryError",),
    "retrieval.ingest": ("IngestError",),
    "eval.beir": ("BeirFormatError",),
    "eval.qa": ("QuestionsFormatError",),
    "feedback.train_reranker": ("TrainingDataError",),
    "feedback.trainset": ("TrainingSetError",),
    "feedback.evalsets": ("EvalSetError",),
    "feedback.jobs": ("JobError",),
    "feedback.bases": ("BaseRerankerError",),
    "generation.engines": ("GenerationError",),
    "generation.pipeline": ("QuestionError",),
    "api.client": ("CiteloopError",),
}

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def loaded_domain_errors() -> tuple[type[Exception], ...]:
    """The domain error classes of the modules imported so far."""
    return tuple(
        getattr(sys.modules[module], name) for module, names in DOMAIN_ERRORS.items() if module in sys.modules for name in names
    )


def message_of(exc: Exception) -> str:
    client = sys.modules.get("api.client")
    if client is not None and isinstance(exc, client.CiteloopError):
        return exc.message  # the server's message, without the status and code its str() adds
    return str(exc)


def reports_errors(*also: type[Exception]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a command so that a domain error, or one of `also` (ValueError where a library's message is meant
    for the user), ends it with `error: <message>` and exit code 1."""

    def decorate(command: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(command)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return command(*args, **kwargs)
            except typer.Exit:  # a RuntimeError to click: `fail` already said why
                raise
            except Exception as exc:
                if not isinstance(exc, (*loaded_domain_errors(), *also)):
                    raise
                fail(message_of(exc))

        return run

    return decorate
