"""Training and registry commands: `train reranker|generator|reward|base`, `models list|promote|rollback|history`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.errors import fail, reports_errors
from cli.output import console
from feedback.cross_encoder_trainer import RerankerTrainingArgs
from feedback.reward import RewardTrainingArgs
from feedback.train_generator import GeneratorTrainingArgs

train_app = typer.Typer(help="Train models from labelled data.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: list, promote, roll back, deployment history.", no_args_is_help=True)
TRAINING_DEFAULTS = RerankerTrainingArgs()  # the training options default to the trainer's own
DPO_DEFAULTS = GeneratorTrainingArgs()
REWARD_DEFAULTS = RewardTrainingArgs()


ModelKindArgument = Annotated[str, typer.Argument(help="reranker, generator or reward.")]
CollectionOption = Annotated[str, typer.Option("--collection", "-c")]


def cli_actor() -> str:
    """Who the deployment history records for a change made from this shell."""
    import getpass

    return f"cli:{getpass.getuser()}"


@train_app.command("reranker")
@reports_errors(ValueError)
def train_reranker_command(
    beir: Annotated[Optional[Path], typer.Option("--beir", help="BEIR directory whose qrels label the training queries.")] = None,
    from_feedback: Annotated[bool, typer.Option("--from-feedback", help="Train on the --collection's stored feedback instead.")] = False,
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="With --from-feedback: the collection.")] = None,
    split: Annotated[str, typer.Option("--split", help="Qrels split to train on (part is held out for the gate).")] = "train",
    promote: Annotated[bool, typer.Option("--promote", help="Promote the candidate if it passes the gate.")] = False,
    loss: Annotated[str, typer.Option("--loss", help="mnrl, cached-mnrl or bce.")] = TRAINING_DEFAULTS.loss,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = TRAINING_DEFAULTS.epochs,
    learning_rate: Annotated[float, typer.Option("--lr")] = TRAINING_DEFAULTS.learning_rate,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = TRAINING_DEFAULTS.batch_size,
    head_learning_rate: Annotated[float, typer.Option("--head-lr", help="Learning rate of the fresh head.")] = TRAINING_DEFAULTS.head_learning_rate,
    frozen_layers: Annotated[int, typer.Option("--frozen-layers", min=0, help="Bottom encoder layers kept fixed.")] = TRAINING_DEFAULTS.frozen_layers,
    hard_negatives: Annotated[int, typer.Option("--hard-negatives", min=0)] = TRAINING_DEFAULTS.hard_negatives,
    in_batch_negatives: Annotated[int, typer.Option("--in-batch-negatives", min=1, help="MNRL: other queries' passages per query.")] = TRAINING_DEFAULTS.in_batch_negatives,
    bf16: Annotated[
        Optional[bool], typer.Option("--bf16/--no-bf16", help="bfloat16 autocast (default: on with a bf16 CUDA GPU, or on a CPU with native bf16 where a probe step on 4 training rows runs >= 1.25x faster in bf16).")
    ] = TRAINING_DEFAULTS.bf16,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=16, help="Training truncation of query + chunk (serving keeps rerank_max_tokens).")] = TRAINING_DEFAULTS.max_tokens,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Cap on optimiser steps (-1: none).")] = TRAINING_DEFAULTS.max_steps,
    seed: Annotated[int, typer.Option("--seed")] = TRAINING_DEFAULTS.seed,
) -> None:
    """Train a cross-encoder reranker on a BEIR collection's qrels or on a collection's stored feedback, gate it on
    queries it never trained on, optionally promote it."""
    from feedback.reranker_loop import train_from_beir, train_from_feedback

    if from_feedback == (beir is not None):
        fail("give one of --beir DIR or --from-feedback --collection NAME")
    if from_feedback and not collection:
        fail("--from-feedback needs --collection NAME")
    if loss not in ("mnrl", "cached-mnrl", "bce"):
        fail(f"--loss must be mnrl, cached-mnrl or bce, not '{loss}'")
    args = replace(
        TRAINING_DEFAULTS,
        loss=loss, epochs=epochs, learning_rate=learning_rate, head_learning_rate=head_learning_rate, frozen_layers=frozen_layers,
        hard_negatives=hard_negatives, in_batch_negatives=in_batch_negatives, bf16=bf16, batch_size=batch_size, max_tokens=max_tokens, max_steps=max_steps,
        seed=seed,
    )
    if from_feedback:
        report = train_from_feedback(collection, args, promote_if_better=promote, show_progress=True, actor=cli_actor())
    else:
        report = train_from_beir(beir, split, args, promote_if_better=promote, show_progress=True, actor=cli_actor())
    verdict = "[green]passed[/]" if report.decision.passed else "[red]failed[/]"
    console.print(f"candidate [bold]{report.version.id}[/] ({report.version.metrics.get('train_seconds')} s training): gate {verdict}: {report.decision.reason}")
    if report.promoted:
        console.print(f"promoted {report.version.id}: collection '{report.version.collection}' now reranks with it")
    elif promote:
        console.print("not promoted: the active model (or hybrid retrieval) keeps serving")


@train_app.command("generator")
@reports_errors(ValueError)
def train_generator_command(
    collection: Annotated[str, typer.Option("--collection", "-c", help="The collection whose stored feedback makes the preference pairs.")],
    promote: Annotated[bool, typer.Option("--promote", help="Promote the candidate if it passes the gate.")] = False,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = DPO_DEFAULTS.epochs,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Cap on optimiser steps (-1: the epochs decide).")] = DPO_DEFAULTS.max_steps,
    learning_rate: Annotated[float, typer.Option("--lr")] = DPO_DEFAULTS.learning_rate,
    beta: Annotated[float, typer.Option("--beta", help="How far DPO may move from the base generator.")] = DPO_DEFAULTS.beta,
    lora_rank: Annotated[int, typer.Option("--lora-rank", min=1)] = DPO_DEFAULTS.lora_rank,
    bf16: Annotated[
        Optional[bool], typer.Option("--bf16/--no-bf16", help="bfloat16 autocast (default: on with a bf16 CUDA GPU or a CPU with native bf16; 1.5x faster DPO steps on Zen 4).")
    ] = DPO_DEFAULTS.bf16,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Also pair K answers sampled from each logged prompt no feedback paired: the active reward model's best over its worst.")] = DPO_DEFAULTS.samples,
    seed: Annotated[int, typer.Option("--seed")] = DPO_DEFAULTS.seed,
) -> None:
    """Train a LoRA adapter of the configured generator by DPO on a collection's preference pairs (corrections,
    votes, flagged citations, refusals; with --samples, reward-ranked samples), gate it on the questions of the
    collection's latest evaluation set with reference answers (else the held-out pairs' questions), optionally
    promote it."""
    from feedback.generator_loop import train_generator_from_feedback

    args = replace(
        DPO_DEFAULTS, epochs=epochs, max_steps=max_steps, learning_rate=learning_rate, beta=beta, lora_rank=lora_rank, bf16=bf16, samples=samples, seed=seed
    )
    report = train_generator_from_feedback(collection, args, promote_if_better=promote, actor=cli_actor())
    _print_report(report, f"{report.version.metrics.get('pairs')} pairs", "answers with its adapter", "the active generator keeps serving", promote)


@train_app.command("reward")
@reports_errors(ValueError)
def train_reward_command(
    collection: Annotated[str, typer.Option("--collection", "-c", help="The collection whose stored feedback rates the answers.")],
    promote: Annotated[bool, typer.Option("--promote", help="Promote the candidate if it passes the gate.")] = False,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = REWARD_DEFAULTS.epochs,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Cap on optimiser steps (-1: the epochs decide).")] = REWARD_DEFAULTS.max_steps,
    learning_rate: Annotated[float, typer.Option("--lr")] = REWARD_DEFAULTS.learning_rate,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = REWARD_DEFAULTS.batch_size,
    seed: Annotated[int, typer.Option("--seed")] = REWARD_DEFAULTS.seed,
) -> None:
    """Train a reward model (a cross-encoder scoring question + answer) on a collection's rated answers (votes,
    corrections, flagged citations, refusals), gate it on the held-out questions' feedback, optionally promote it."""
    from feedback.reward import train_reward_from_feedback

    args = replace(REWARD_DEFAULTS, epochs=epochs, max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size, seed=seed)
    report = train_reward_from_feedback(collection, args, promote_if_better=promote, actor=cli_actor())
    _print_report(report, f"{report.version.metrics.get('ratings')} ratings", "scores answers with it", "the active reward model (if any) stays", promote)


def _print_report(report, trained_on: str, now: str, kept: str, asked_to_promote: bool) -> None:
    """A training run's candidate, its gate and whether it now serves (`now`: what the collection does with it)."""
    verdict = "[green]passed[/]" if report.decision.passed else "[red]failed[/]"
    console.print(
        f"candidate [bold]{report.version.id}[/] ({trained_on}, {report.version.metrics.get('train_seconds')} s training): gate {verdict}: {report.decision.reason}"
    )
    if report.promoted:
        console.print(f"promoted {report.version.id}: collection '{report.version.collection}' now {now}")
    elif asked_to_promote:
        console.print(f"not promoted: {kept}")


@train_app.command("base")
@reports_errors(ValueError)
def train_base_command(
    data: Annotated[str, typer.Option("--data", help="Bundled labelled data: scifact, covidqa, or scifact+covidqa.")] = "scifact+covidqa",
) -> None:
    """Build the warm-start base reranker (once; cached) that CITELOOP_RERANKER_BASE=<data> fine-tunes from."""
    from citeloop.config import get_settings
    from feedback.bases import build_base, parse_sources

    path = build_base(parse_sources(data), get_settings(), show_progress=True, log=lambda m: console.print(f"[dim]{m}[/]"))
    console.print(f"base reranker on {data}: {path.parent}")


@models_app.command("list")
def models_list(
    collection: Annotated[Optional[str], typer.Option("--collection", "-c")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind")] = None,
) -> None:
    """Registered model versions with their status and key figures."""
    from citeloop.registry import list_versions

    versions = list_versions(collection=collection, kind=kind)
    if not versions:
        console.print("no model versions registered (train one: citeloop train reranker --beir DIR)")
        return
    table = Table("version", "collection", "kind", "status", "parent", "snapshot", "val nDCG@10", "gate", "created", "data erased")
    for v in versions:
        gate = v.metrics.get("gate", {})
        table.add_row(
            v.id, v.collection, v.kind, v.status, v.parent_id or "-", v.snapshot_id[:17],
            str(v.metrics.get("val_ndcg@10", "-")), "passed" if gate.get("passed") else ("failed" if gate else "-"),
            v.created_at.strftime("%Y-%m-%d %H:%M"), f"{v.data_erased_at:%Y-%m-%d %H:%M}" if v.data_erased_at else "-",
        )
    console.print(table)


@models_app.command("promote")
@reports_errors(ValueError)
def models_promote(
    version_id: Annotated[str, typer.Argument(help="Version id from `models list`.")],
    force: Annotated[bool, typer.Option("--force", help="Promote even when the gate fails (recorded as forced).")] = False,
) -> None:
    """Gate a version against the active one on its held-out queries and promote it if it is better."""
    from citeloop.registry import get_version, promote, record_metrics
    from feedback.gates import regate
    from feedback.reranker_loop import gate_record

    version = get_version(version_id)
    if version.status == "active":
        fail(f"model version '{version_id}' is already active")
    decision = regate(version, show_progress=True)
    record_metrics(version_id, {"gate": gate_record(decision)})
    if not decision.passed and not force:
        fail(f"gate failed, '{version_id}' not promoted: {decision.reason} (--force promotes it anyway)")
    promote(version_id, actor=cli_actor(), force=force)
    console.print(f"promoted {version_id}{'' if decision.passed else ' (forced)'}: {decision.reason}")


@models_app.command("rollback")
@reports_errors()
def models_rollback(kind: ModelKindArgument, collection: CollectionOption) -> None:
    """Re-activate the version that served before the active one was deployed (or none: the stage below serves)."""
    from citeloop.registry import rollback

    restored = rollback(collection, kind, actor=cli_actor())
    console.print(f"'{collection}' {kind}: now {restored.id if restored else 'none (the stage below serves)'}")


@models_app.command("history")
@reports_errors()
def models_history(kind: ModelKindArgument, collection: CollectionOption) -> None:
    """Every promotion and rollback of a collection's models of a kind, oldest first."""
    from citeloop.registry import deployment_history

    deployments = deployment_history(collection, kind)
    if not deployments:
        console.print(f"'{collection}' has never deployed a {kind}")
        return
    table = Table("when", "from", "to", "why", "by")
    for d in deployments:
        table.add_row(f"{d.deployed_at:%Y-%m-%d %H:%M:%S}", d.from_version or "-", d.to_version or "-", d.reason, d.actor)
    console.print(table)
