"""ragas' LLM-judged metrics with an offline judge: the schema each ragas prompt states holds the local judge's
decoding to parseable JSON, the metrics are scored with a real small model (SmolLM2 through llama.cpp), every row
is scored, failed or not applicable (counted, never a silent zero), and a bad --judge is a clear error."""

from __future__ import annotations

import json
import warnings

import pytest

from eval.judge import MAX_LIST_ITEMS, judge_metrics, local_judge, minilm_embeddings, prompt_schema
from eval.ragas_suite import add_ragas_metrics
from tests.test_cli import run_cli

JUDGE = "smollm2-135m"


def _faithfulness_prompt() -> tuple[str, type]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.metrics import Faithfulness
        from ragas.metrics._faithfulness import StatementGeneratorInput, StatementGeneratorOutput

    prompt = Faithfulness().statement_generator_prompt.to_string(
        StatementGeneratorInput(question="What is a bond?", answer="A bond is a loan to an issuer. It pays a coupon.")
    )
    return prompt, StatementGeneratorOutput


def test_a_ragas_prompt_states_the_schema_the_judge_is_held_to():
    prompt, output = _faithfulness_prompt()
    schema = prompt_schema(prompt)
    assert schema["properties"]["statements"] == output.model_json_schema()["properties"]["statements"] | {"maxItems": MAX_LIST_ITEMS, "minItems": 1}
    assert prompt_schema("Answer in one word.") is None


def _row(rid: str, answer: str, abstained: bool = False, error: str | None = None, answerable: bool = True) -> dict:
    return {
        "id": rid, "question": "What does a bond pay?", "answer": answer, "abstained": abstained, "error": error, "answerable": answerable,
        "references": ["A bond pays a coupon."] if answerable else [],
        "retrieved_contexts": ["A bond is a loan to an issuer. The issuer pays the holder a coupon each year."],
    }


@pytest.mark.slow
def test_the_local_judge_scores_every_row_or_counts_it(sqlite_settings):
    from langchain_core.prompt_values import StringPromptValue

    judge = local_judge(JUDGE, sqlite_settings, max_tokens=256, timeout_s=120)
    prompt, output = _faithfulness_prompt()
    reply = judge.generate_text(StringPromptValue(text=prompt)).generations[0][0].text
    statements = output.model_validate_json(reply).statements  # the grammar held a 135M model to the schema
    assert len(statements) <= MAX_LIST_ITEMS and json.loads(reply)

    rows = [
        _row("answered", "A bond pays its holder a coupon each year [1]."),
        _row("declined", "I don't know.", abstained=True),
        _row("declined-unanswerable", "I don't know.", abstained=True, answerable=False),
        _row("failed", "", error="generation took longer than 60 s"),
    ]
    judged = []
    report = add_ragas_metrics(
        {"metrics": {}, "rows": rows}, judge_metrics(judge, minilm_embeddings(sqlite_settings), ("faithfulness", "answer_relevancy")),
        judge=True, on_row=judged.append,
    )
    # Faithfulness: a declined answer has no claim to check, a failed row no answer. Relevance judges a declined
    # answerable question (the right answer to an unanswerable one is a refusal, not an irrelevant answer).
    assert report["not_applicable"] == {"faithfulness": 3, "answer_relevancy": 2}
    assert report["rows"][0]["answer_relevancy"] is not None and report["rows"][1]["answer_relevancy"] is not None
    # Each applicable row is scored or counted as failed, never dropped; the 135M judge may state no statement
    # (ragas' NaN), but its replies parse.
    faithful = report["rows"][0]["faithfulness"]
    assert (faithful is None) == (report["failures"]["faithfulness"] == 1) and report["failure_examples"].get("faithfulness") in (None, "NaN")
    assert report["failures"]["answer_relevancy"] == 0
    for name in ("faithfulness", "answer_relevancy"):
        values = [r[name] for r in report["rows"] if r[name] is not None]
        assert all(0.0 <= v <= 1.0 for v in values) and report["metrics"][name] == (round(sum(values) / len(values), 4) if values else None)
    assert judged == ["faithfulness"] * 4 + ["answer_relevancy"] * 4


def test_a_bad_judge_is_a_clear_error_before_anything_is_answered(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"user_input": "Why?"}\n')
    data = tmp_path / "var"
    unknown = run_cli("eval", "qa", str(questions), "-c", "docs", "--judge", "gpt-judge", data_dir=data)
    assert (unknown.returncode, unknown.stderr) == (1, "error: --judge must be 'local' or an http(s) URL of an OpenAI-compatible server, not 'gpt-judge'\n")
    nameless = run_cli("eval", "qa", str(questions), "-c", "docs", "--judge", "http://127.0.0.1:9/v1", data_dir=data)
    assert (nameless.returncode, nameless.stderr) == (1, "error: --judge URL needs --judge-model NAME (the model the server serves)\n")
    metric = run_cli("eval", "qa", str(questions), "-c", "docs", "--judge", "local", "--judge-model", JUDGE, "--judge-metrics", "faithfulness,vibes", data_dir=data)
    assert metric.returncode == 1 and metric.stderr.startswith("error: unknown judge metric(s) vibes; available: faithfulness, ")


@pytest.mark.slow
def test_a_judge_at_a_url_is_asked_over_http(sqlite_settings):
    """llama.cpp's own OpenAI-compatible server, serving SmolLM2, judges through `--judge URL`."""
    import subprocess
    import sys

    import httpx

    from eval.judge import remote_judge
    from generation.models import resolve_generator
    from eval.feedback_loop import free_port
    from tests.test_api import wait_until_ready

    port = free_port()
    gguf = resolve_generator(JUDGE, sqlite_settings).gguf
    log = sqlite_settings.data_dir.parent / "llama-server.log"  # a file: llama.cpp's load log would fill a pipe and stall it
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smol", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
            stdout=sink, stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/v1/models", lambda: None if server.poll() is None else log.read_text()[-2000:])
        url = f"http://127.0.0.1:{port}/v1"
        report = add_ragas_metrics({"metrics": {}, "rows": [_row("answered", "A bond pays its holder a coupon each year [1].")]},
                                   judge_metrics(remote_judge(url, "smol", max_tokens=256, timeout_s=120), None, ("faithfulness",)), judge=True)
        value, failed = report["rows"][0]["faithfulness"], report["failures"]["faithfulness"]
        assert (value is None) == (failed == 1) and (value is None or 0.0 <= value <= 1.0)
        # The server answered each call (a reply that does not parse would be counted as the failure).
        assert not any(word in str(report["failure_examples"]) for word in ("Connection", "Timeout")), report["failure_examples"]
        assert log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') >= 1
    finally:
        server.kill()
        server.wait(timeout=30)


def test_every_judged_metrics_output_schema_becomes_a_grammar():
    """llama.cpp falls back to any-JSON, silently, for a schema its converter cannot take: each prompt's must convert."""
    from llama_cpp.llama_grammar import LlamaGrammar

    from eval.judge import JUDGE_METRICS, _bounded

    metrics = judge_metrics(None, None, JUDGE_METRICS)
    prompts = [prompt for metric in metrics for prompt in metric.get_prompts().values()]
    assert len(prompts) >= len(JUDGE_METRICS)
    for prompt in prompts:
        LlamaGrammar.from_json_schema(json.dumps(_bounded(prompt.output_model.model_json_schema())), verbose=False)
