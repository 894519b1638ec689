"""The HTML report of stored eval runs, written by the CLI and looked at as a person would: opened in Debian's
chromium (Playwright) with the network shut, its charts drawn, its tables filled, a run's text escaped."""

from __future__ import annotations

import shutil

import pytest

from citeloop.db import session_scope
from eval.qa import QuestionRow
from eval.runs import save_run
from retrieval.ingest import get_or_create_collection
from tests.test_cli import run_cli

CHROMIUM = "/usr/bin/chromium"
INJECTED = "<script>window.injected = true</script><b>bold?</b>"
QUESTIONS = [QuestionRow(f"q{i}", f"Which setting controls item {i}?", [f"Setting {i} controls it."], [f"doc{i}"], "factoid") for i in range(6)]
QUESTIONS.append(QuestionRow("q-none", "Who won the 1954 chess cup?", [], [], "unanswerable"))


def _row(q: QuestionRow, f1: float | None, answer: str, rouge: float | None) -> dict:
    return {
        "id": q.id, "question": q.question, "answerable": q.answerable, "answer": answer, "abstained": False, "abstain_reason": None,
        "draft": answer, "extractive": False, "error": None, "shape": q.shape, "references": q.references, "reference_doc_ids": q.doc_ids,
        "citations": [{"n": 1, "doc_id": q.doc_ids[0] if q.doc_ids else "doc0", "quote": "Setting controls it.", "supported": f1 is None or f1 > 0.3}],
        "context_doc_ids": ["doc0", *q.doc_ids], "retrieved_contexts": ["First source text.", "Second source text " * 80],
        "answer_f1": f1, "contains_reference": None if f1 is None else f1 > 0.5, "latency_ms": 900.0, "rouge_score": rouge,
    }


def _report(f1s: list[float], answers: list[str], generator: str, failed_rouge: int) -> dict:
    rows = [_row(q, f1, a, None if i < failed_rouge else f1 / 2) for i, (q, f1, a) in enumerate(zip(QUESTIONS, f1s, answers))]
    rows.append(_row(QUESTIONS[-1], None, "The 1954 cup was won by someone [1].", None))
    stages = {s: {"ndcg@10": v, "recall@100": min(1.0, v + 0.2), "mrr@10": v - 0.05, "queries": 6} for s, v in (("bm25", 0.5), ("dense", 0.6), ("hybrid", 0.7))}
    return {
        "metrics": {
            "n": 7, "answerable": 6, "unanswerable": 1, "errors": 0, "answer_f1": sum(f1s) / 6, "citation_precision": 0.8,
            "decline_rate_answerable": 0.0, "refusal_rate_unanswerable": 0.0, "latency_p50_ms": 900.0, "rouge_score": 0.3, "retrieval_stages": stages,
        },
        "models": {"generator": generator, "reranker": "rr-1"}, "rows": rows, "failures": {"rouge_score": failed_rouge},
    }


@pytest.fixture
def stored_runs(sqlite_settings):
    with session_scope(sqlite_settings) as session:
        get_or_create_collection(session, "docs")
    base = _report([0.1, 0.2, 0.3, 0.2, 0.1, 0.4], [INJECTED, *[f"Setting {i} [1]." for i in range(1, 6)]], "base", 0)
    candidate = _report([0.6, 0.7, 0.5, 0.8, 0.6, 0.3], [f"Setting {i} controls it [1]." for i in range(6)], "candidate", 2)
    with session_scope(sqlite_settings) as session:
        a = save_run(session, "docs", "questions.jsonl", QUESTIONS, base, {}, "cli")
        b = save_run(session, "docs", "questions.jsonl", QUESTIONS, candidate, {}, "cli")
    return sqlite_settings, a.id, b.id


def _open_offline(path, screenshot):
    """The page in chromium with every request other than the file itself refused; (page facts, requests refused)."""
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    refused: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://") else (refused.append(route.request.url), route.abort()))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(path.as_uri())
        page.wait_for_selector("#distributions .main-svg", timeout=30_000)
        facts = page.evaluate(
            """() => ({
                charts: [...document.querySelectorAll('.chart')].map(c => [c.id, c.querySelectorAll('.main-svg').length, c.querySelectorAll('.trace, .point').length]),
                cards: [...document.querySelectorAll('#summary .card .name')].map(e => e.textContent),
                deltas: [...document.querySelectorAll('#summary .delta')].map(e => e.textContent),
                comparison: document.querySelectorAll('#comparison tr').length,
                worst: [...document.querySelectorAll('#worst tr')].slice(1).map(r => r.querySelector('b').textContent),
                injected: window.injected === true,
                text: document.body.innerText,
            })"""
        )
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return facts, refused, errors


@pytest.mark.slow
def test_the_report_opens_offline_with_its_charts_tables_and_worst_questions(stored_runs, tmp_path):
    settings, base, candidate = stored_runs
    out = tmp_path / "report.html"
    written = run_cli("eval", "report", candidate, "--baseline", base, "--out", str(out), data_dir=settings.data_dir)
    assert written.returncode == 0, written.stderr
    facts, refused, errors = _open_offline(out, tmp_path / "report.png")

    assert refused == [] and errors == []  # plotly.js is inline: nothing is fetched, nothing throws
    charts = {name: (svgs, marks) for name, svgs, marks in facts["charts"]}
    assert set(charts) == {"distributions", "stages", "before-after"} and all(svgs >= 1 and marks >= 1 for svgs, marks in charts.values())
    assert facts["cards"][:2] == ["answer_f1", "citation_precision"] and "rouge_score" in facts["cards"]
    assert "+0.3667 paired over 6 questions vs baseline" in facts["deltas"][0]  # answer F1 0.2167 -> 0.5833
    assert "2 failed rows" in facts["text"] and "rouge_score 2" in facts["text"]  # failures shown, not averaged away
    assert facts["comparison"] > 3
    # The unanswerable question that was answered comes first, then answerable ones by answer F1.
    assert facts["worst"][:2] == ["Who won the 1954 chess cup?", QUESTIONS[5].question]
    assert (tmp_path / "report.png").stat().st_size > 20_000

    baseline_alone = tmp_path / "base.html"
    assert run_cli("eval", "report", base, "-o", str(baseline_alone), data_dir=settings.data_dir).returncode == 0
    facts, _, _ = _open_offline(baseline_alone, tmp_path / "base.png")
    assert not facts["injected"] and INJECTED in facts["text"]  # a run's text is shown as text, never run
    assert {name for name, _, _ in facts["charts"]} == {"distributions", "stages"}


def test_a_report_of_an_unknown_run_is_an_error(sqlite_settings, tmp_path):
    out = tmp_path / "r.html"
    missing = run_cli("eval", "report", "run-nope", "--out", str(out), data_dir=sqlite_settings.data_dir)
    assert (missing.returncode, missing.stderr) == (1, "error: no evaluation run 'run-nope'\n") and not out.exists()
