"""Generation benchmark (a script, not a test): llama.cpp vs plain fp32 transformers on the same model,
the same grounded prompts and greedy decoding, on this machine, side by side.

    python bench/bench_generate.py --data-dir var [--prompts 5] [--qa-limit 40] [--engines transformers,llama-cpp]
    python bench/bench_generate.py --render

Prompts are real: COVID-QA dev questions with their retrieved sources (hybrid retrieval, the pipeline's own
prompt). Per engine: time to first token, decode tokens/s after the first token, and answer quality
(`citeloop eval qa` metrics) on the first --qa-limit dev questions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import citeloop  # noqa: E402,F401
from bench.readme_tables import write_table  # noqa: E402
from citeloop.config import Settings  # noqa: E402

COVIDQA = REPO / "corpora" / "covidqa"
RESULTS = REPO / "bench" / "results" / "generate.json"
KEY, HEADING = "generate-bench", "## Generation (`python bench/bench_generate.py`)"


def decode_speed(generator, prompts: list[list[dict]], max_new_tokens: int) -> dict:
    from generation.engines import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=0, timeout_s=600)
    first_token_ms, decode_tps, outputs = [], [], []
    for messages in prompts:
        start = time.perf_counter()
        first = None
        pieces = []
        for piece in generator.stream(messages, params):
            if first is None:
                first = time.perf_counter()
            pieces.append(piece)
        end = time.perf_counter()
        text = "".join(pieces)
        tokens = generator.count_tokens(text)
        first_token_ms.append((first - start) * 1000)
        if tokens > 1:
            decode_tps.append((tokens - 1) / (end - first))
        outputs.append(text)
    return {
        "first_token_ms_p50": round(statistics.median(first_token_ms), 1),
        "first_token_ms": [round(v, 1) for v in first_token_ms],
        "decode_tok_s_p50": round(statistics.median(decode_tps), 2),
        "decode_tok_s": [round(v, 2) for v in decode_tps],
        "outputs": outputs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "var")
    parser.add_argument("--engines", default="transformers,llama-cpp")
    parser.add_argument("--prompts", type=int, default=5, help="Prompts timed per engine.")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--qa-limit", type=int, default=40, help="Dev questions answered per engine for quality (0: skip).")
    parser.add_argument("--render", action="store_true", help="Only rewrite the README table from the JSON.")
    args = parser.parse_args()
    if args.render:
        write_table(KEY, HEADING, render_table(json.loads(RESULTS.read_text())))
        return

    from eval.qa import evaluate_qa, load_questions
    from eval.retrieval import ensure_eval_collection
    from generation.engines import load_generator
    from generation.pipeline import AnswerPipeline
    from generation.prompt import build_messages, fit_sources, numbered_sources
    from retrieval.rerank import RankedSearch

    base = Settings(data_dir=args.data_dir)
    collection = ensure_eval_collection(COVIDQA, base, show_progress=True)
    rows = load_questions(COVIDQA / "questions_dev.jsonl")
    search = RankedSearch(collection, base)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "generator": base.generator,
        "max_new_tokens": args.max_new_tokens,
        "engines": {},
    }
    for engine in args.engines.split(","):
        settings = base.model_copy(update={"generator_engine": engine})
        generator = load_generator(settings)
        budget = settings.context_window - settings.max_new_tokens
        prompts, prompt_tokens = [], []
        for row in rows[: args.prompts]:
            hits = search.search(row.question, k=settings.answer_contexts).hits
            messages = build_messages(row.question, fit_sources(row.question, numbered_sources(hits), generator.count_tokens, budget))
            prompts.append(messages)
            prompt_tokens.append(sum(generator.count_tokens(m["content"]) for m in messages))
        print(f"{engine}: timing {len(prompts)} prompts ({statistics.median(prompt_tokens):.0f} tokens median)", flush=True)
        entry = {"model": generator.model_id, "prompt_tokens_p50": statistics.median(prompt_tokens)}
        entry |= decode_speed(generator, prompts, args.max_new_tokens)
        if args.qa_limit:
            print(f"{engine}: answering {args.qa_limit} dev questions", flush=True)
            report = evaluate_qa(rows[: args.qa_limit], AnswerPipeline(collection, settings).answer)
            entry["qa"] = report["metrics"]
        result["engines"][engine] = entry
        print(json.dumps({k: v for k, v in entry.items() if k != "outputs"}, indent=2), flush=True)
    engines = result["engines"]
    if "llama-cpp" in engines and "transformers" in engines:
        result["decode_speedup"] = round(engines["llama-cpp"]["decode_tok_s_p50"] / engines["transformers"]["decode_tok_s_p50"], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_table(KEY, HEADING, render_table(result))


def render_table(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['processor']}); generator `{result['generator']}`, "
        f"greedy, up to {result['max_new_tokens']} new tokens, COVID-QA dev prompts with retrieved sources.",
        "",
        "| engine | prompt tokens | first token ms (p50) | decode tok/s (p50) | answer_f1 | contains ref | citation precision | abstain rate | questions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for engine, e in result["engines"].items():
        qa = e.get("qa", {})
        lines.append(
            f"| {engine} | {e['prompt_tokens_p50']:.0f} | {e['first_token_ms_p50']} | {e['decode_tok_s_p50']} | {qa.get('answer_f1', '-')} "
            f"| {qa.get('answer_contains_reference', '-')} | {qa.get('citation_precision', '-')} | {qa.get('decline_rate_answerable', '-')} | {qa.get('n', '-')} |"
        )
    if "decode_speedup" in result:
        lines += ["", f"llama.cpp decodes {result['decode_speedup']}x faster than fp32 transformers on the same prompts."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
