"""The generator's replay harness: what users' and curators' feedback on answers buys the generator, measured on
questions the feedback never touched.

In a data directory of its own, the harness ingests a BEIR corpus (or a copy of one of the service's collections),
starts a real `citeloop serve` and `citeloop
worker`, and plays the users and a curator over HTTP. A simulated user asks each dev question and votes up when the
answer matches a reference (token F1 >= 0.5) and cites a gold document, or, for a question without a reference,
when it declines; down otherwise. A simulated curator flags every citation outside the gold documents; for a
thumbs-down answer to an answerable question writes the reference answer as the correction (the whole source
sentence when the reference is a span of one), citing the shown source of a gold document that holds most of the
reference's words (no correction when no gold source was shown: counted); for a thumbs-down answer to an
unanswerable question judges every source it was shown not relevant.
A `generator` job then trains from that stored feedback alone (pairs, DPO, gate, promotion if it passes); the test
questions are answered before and after, with `eval qa`'s metrics.

When the test file is the dev file, a held-out slice of its questions is the test set and the rest is asked: the
slice after the one the job's gate holds out of the pairs (`is_holdout` fold 1, the gate's is fold 0), so the
gate has dev questions to compare on and neither is a test question. A test question whose text is also a dev
question is dropped either way.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from citeloop.config import Settings, get_settings
from eval.feedback_loop import harness_settings, job_seconds, running_service, succeeded
from eval.qa import QuestionRow, evaluate_qa, load_questions, normalize_answer, strip_markers, token_f1
from feedback.examples import is_holdout, query_key
from feedback.train_generator import GeneratorTrainingArgs
from generation.text import sentence_spans

MATCH_F1 = 0.5  # a simulated user's thumbs-up: the answer's token F1 against a reference at least this
TEST_FOLD = 1  # the held-out slice of a dev file that is tested: not the gate's (fold 0)


def liked(row: QuestionRow, answer: dict) -> bool:
    """The simulated user's vote on an answer."""
    if not row.answerable:
        return answer["abstained"]
    if answer["abstained"]:
        return False
    text = strip_markers(answer["answer"])
    matches = max(token_f1(text, reference) for reference in row.references) >= MATCH_F1
    return matches and any(c["doc_id"] in row.doc_ids for c in answer["citations"])


def gold_source(row: QuestionRow, contexts: list[dict]) -> int | None:
    """The number of the shown source a curator's correction cites: of the gold documents' sources, the one that
    holds the largest share of the reference answer's words; None when no gold source was shown."""
    words = set(normalize_answer(row.references[0]).split())
    held = [
        (len(words & set(normalize_answer(c["text"]).split())), -n, n) for n, c in enumerate(contexts, start=1) if c["doc_id"] in row.doc_ids
    ]
    return max(held)[2] if held else None


def correction_text(row: QuestionRow, contexts: list[dict]) -> str | None:
    """What the simulated curator writes for a thumbs-down answer: the reference answer citing `gold_source`, or,
    when the reference is a fragment of one of that source's sentences (a span, as extractive QA sets have them),
    the whole sentence, as a curator copies a source's words into a sentence that answers; None when no gold source
    was shown."""
    gold = gold_source(row, contexts)
    if gold is None:
        return None
    reference = " ".join(row.references[0].split())
    text = contexts[gold - 1]["text"]
    fragment = f" {normalize_answer(reference)} "  # whole words: "2" is no span of "2020"
    holding = [" ".join(text[a:b].split()) for a, b in sentence_spans(text) if fragment.strip() and fragment in f" {normalize_answer(text[a:b])} "]
    shortest = min(holding, key=len) if holding else None
    answer = shortest if shortest and normalize_answer(shortest) != fragment.strip() else reference
    return f"{answer.rstrip()} [{gold}]"


def simulate_feedback(user, curator, collection: str, rows: list[QuestionRow], progress=lambda message: None) -> dict:
    """Ask, vote and curate each row through the API (module docstring); returns the counts of what was sent."""
    counts = {"asked": 0, "thumbs_up": 0, "thumbs_down": 0, "citation_flags": 0, "corrections": 0, "not_relevant_marks": 0, "no_gold_source_shown": 0}
    for i, row in enumerate(rows, start=1):
        answer = user.ask(collection, row.question)
        counts["asked"] += 1
        good = liked(row, answer)
        user.vote(answer["answer_id"], "up" if good else "down")
        counts["thumbs_up" if good else "thumbs_down"] += 1
        for citation in answer["citations"]:
            if row.doc_ids and citation["doc_id"] not in row.doc_ids:
                curator.flag(answer["answer_id"], citation["n"], "cites a document that does not answer the question")
                counts["citation_flags"] += 1
        if not good and row.answerable:
            text = correction_text(row, answer["contexts"])
            if text is None:
                counts["no_gold_source_shown"] += 1
            else:
                curator.correct(answer["answer_id"], text)
                counts["corrections"] += 1
        elif not good:
            for context in answer["contexts"]:
                curator.judge(context["chunk_id"], False, answer_id=answer["answer_id"])
                counts["not_relevant_marks"] += 1
        if i % 10 == 0:
            progress(f"feedback on {i}/{len(rows)} dev questions")
    return counts


def split_questions(dev: Path, test: Path, limit: int | None, holdout: float) -> tuple[list[QuestionRow], list[QuestionRow]]:
    same_file = dev.resolve() == test.resolve()
    tested = lambda row: is_holdout(query_key(row.question), holdout, fold=TEST_FOLD)  # noqa: E731
    dev_rows = [r for r in load_questions(dev) if not (same_file and tested(r))]
    test_rows = [r for r in load_questions(test) if not same_file or tested(r)]
    asked = {query_key(r.question) for r in dev_rows}
    test_rows = [r for r in test_rows if query_key(r.question) not in asked]
    if limit:
        dev_rows, test_rows = dev_rows[:limit], test_rows[:limit]
    if not dev_rows or not test_rows:
        raise ValueError(f"{dev} / {test}: {len(dev_rows)} dev and {len(test_rows)} test questions; both need some")
    return dev_rows, test_rows


def copy_collection(name: str, source: Settings, target: Settings) -> None:
    """A collection's documents as stored (text, title, metadata) ingested afresh under the same name into another
    data directory: the harness replays feedback on a copy, never on the collection the service serves."""
    from sqlalchemy import select

    from citeloop.db import Document, get_collection, session_scope
    from retrieval.ingest import ingest
    from retrieval.readers import SourceDocument

    if source.sqlalchemy_url == target.sqlalchemy_url or source.data_dir.resolve() == target.data_dir.resolve():
        raise ValueError(f"the harness's data directory {target.data_dir} is the service's: give it one of its own (--data-dir)")
    with session_scope(source) as session:
        found = get_collection(session, name)
        rows = session.scalars(select(Document).where(Document.collection_id == found.id).order_by(Document.doc_id))
        documents = [SourceDocument(d.doc_id, d.source, d.title, d.text, dict(d.meta or {})) for d in rows]
    if not documents:
        raise ValueError(f"collection '{name}' has no documents to replay feedback on")
    ingest(documents, name, target)


def run_answer_feedback_loop(
    dev: Path,
    test: Path,
    corpus: Path | None = None,
    limit: int | None = None,
    data_dir: Path | None = None,
    args: GeneratorTrainingArgs | None = None,
    settings_overrides: dict | None = None,
    progress=print,
    collection: str | None = None,
    source: Settings | None = None,
) -> dict:
    """The report `citeloop eval feedback-loop --qa --json` writes: `before` and `after` (eval qa metrics on the
    test questions, with `by_shape`), `pairs`, `train_seconds` (the job: pairs, DPO, conversion, gate; `dpo_seconds`
    the training alone), the feedback sent, the job and its gate (with `args.samples`, the reward job that ranks the
    sampled answers first, `reward_job`). `settings_overrides`: settings (and the
    service's CITELOOP_* environment) for the harness's data directory, e.g. the generator. The questions are about
    the BEIR `corpus`, or about the `collection` in the data of the `source` settings (default: the configured
    ones), which the harness copies."""
    from api.client import Client
    from citeloop.keys import create_key
    from citeloop.registry import active_version, get_version
    from eval.retrieval import ensure_eval_collection
    from feedback.jobs import JOB_OPTIONS
    from generation.pipeline import AnswerPipeline

    args = args or GeneratorTrainingArgs()
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix="citeloop-answer-loop-")).resolve()
    settings = harness_settings(data_dir, **(settings_overrides or {}))
    dev_rows, test_rows = split_questions(Path(dev), Path(test), limit, settings.eval_holdout)
    if (corpus is None) == (collection is None):
        raise ValueError("the questions are about a BEIR corpus or a collection: give one of the two")
    if collection is not None:
        source = source or get_settings()
        progress(f"copying collection '{collection}' from {source.data_dir} into {data_dir}")
        copy_collection(collection, source, settings)
    else:
        progress(f"ingesting {Path(corpus).name} into {data_dir}")
        collection = ensure_eval_collection(Path(corpus), settings)
    keys = {role: create_key(f"harness-{role}", role, ["*"], settings) for role in ("reader", "curator", "admin")}
    result: dict = {
        "collection": collection, "generator": settings.generator, "dev_questions": len(dev_rows), "test_questions": len(test_rows),
        "args": args.as_params(), "data_dir": str(data_dir),
    }
    pipeline = AnswerPipeline(collection, settings)

    def evaluate(version=None) -> dict:
        report = evaluate_qa(test_rows, lambda q, filters: pipeline.answer(q, generator=version, filters=filters))
        return report["metrics"] | {"by_shape": report["by_shape"]}

    progress(f"before: {len(test_rows)} test questions")
    result["before"] = evaluate()
    environment = {f"CITELOOP_{k.upper()}": str(v) for k, v in (settings_overrides or {}).items()}
    with running_service(settings, data_dir / "service.log", environment) as url:
        user, curator, admin = (Client(url, keys[role], timeout=600) for role in ("reader", "curator", "admin"))
        progress(f"users and a curator on {len(dev_rows)} dev questions")
        started = time.monotonic()
        result["feedback"] = simulate_feedback(user, curator, collection, dev_rows, progress) | {"seconds": round(time.monotonic() - started, 1)}
        if args.samples:
            progress("reward model job on the stored feedback: it ranks the answers the generator job samples")
            reward = succeeded(admin, admin.submit_job(collection, kind="reward"))
            reward_gate = reward["result"]["gate"]
            result["reward_job"] = {
                "id": reward["id"], "version": reward["version_id"], "promoted": reward["result"]["promoted"],
                "gate": {k: reward_gate.get(k) for k in ("passed", "candidate", "reason")},
            }
            if not reward["result"]["promoted"]:
                raise RuntimeError(f"the reward model was not promoted ({reward_gate['reason']}): sampling needs an active one")
        progress("generator training job on the stored feedback")
        defaults = GeneratorTrainingArgs()
        options = {name: getattr(args, name) for name in JOB_OPTIONS["generator"] if getattr(args, name) != getattr(defaults, name)}
        job = succeeded(admin, admin.submit_job(collection, kind="generator", options=options))
    version = get_version(job["version_id"], settings)
    gate = job["result"]["gate"]
    result["job"] = {"id": job["id"], "version": version.id, "promoted": job["result"]["promoted"], "gate": {k: gate.get(k) for k in ("passed", "gain", "ci_low", "ci_high", "reason")}}
    result["pairs"] = version.metrics["pairs"]
    result["snapshot"] = version.params["eval"]["counts"] | {"dropped": version.params["eval"]["dropped"]}
    result["dpo_seconds"] = version.metrics["train_seconds"]
    result["train_seconds"] = job_seconds(job)
    active = active_version(collection, "generator", settings)
    progress(f"after: {len(test_rows)} test questions with {(active or version).id}")
    result["after"] = evaluate(active or version)
    result["after_serves"] = active.id if active else "the base generator (the candidate was not promoted; `after` is the candidate's)"
    return result

