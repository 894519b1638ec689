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
    assert schema["properties"]["statements"] == output.model_json_schema()["properties"]["statements"] | {"maxItems": MAX_LIST_ITEMS}
    assert prompt_schema("Answer in one word.") is None


def _row(rid: str, answer: str, abstained: bool = False, error: str | None = None) -> dict:
    return {
        "id": rid, "question": "What does a bond pay?", "answer": answer, "abstained": abstained, "error": error,
        "references": ["A bond pays a coupon."], "retrieved_contexts": ["A bond is a loan to an issuer. The issuer pays the holder a coupon each year."],
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
        _row("failed", "", error="generation took longer than 60 s"),
    ]
    judged = []
    report = add_ragas_metrics(
        {"metrics": {}, "rows": rows}, judge_metrics(judge, minilm_embeddings(sqlite_settings), ("faithfulness", "answer_relevancy")),
        judge=True, on_row=judged.append,
    )
    for name in ("faithfulness", "answer_relevancy"):
        value = report["rows"][0][name]
        assert (value is None) == (report["failures"][name] == 1)  # scored, or counted as failed: never dropped
        assert value is None or 0.0 <= value <= 1.0
        assert report["not_applicable"][name] == 2  # a declined answer has no claims to judge; a failed one no answer
        assert report["metrics"][name] == (None if value is None else round(value, 4))
    assert judged == ["faithfulness"] * 3 + ["answer_relevancy"] * 3


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
