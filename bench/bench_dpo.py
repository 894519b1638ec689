"""DPO benchmark (a script, not a test): how long training a LoRA adapter on N preference pairs takes here.

    python bench/bench_dpo.py --generator smollm2-135m --pairs 200 [--epochs 1] [--max-steps N] [--bf16|--no-bf16]
        [--evidence-sentences N] [--json OUT]

Pairs are shaped like served ones: a COVID-QA dev question, the serving prompt over three sources (a ~120-word
window of its reference article holding the answer, and windows of two other articles), the reference answer
citing [1] as chosen and the refusal as rejected; `--evidence-sentences N`: each source shown as its N sentences
closest to the question, as serving shows them with CITELOOP_EVIDENCE_SENTENCES=N. Reports prompt tokens, steps,
and the trainer's wall time (reference log-probabilities included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import citeloop  # noqa: E402,F401
from citeloop.config import Settings  # noqa: E402

COVIDQA = REPO / "corpora" / "covidqa"
WINDOW = 120  # words per source


def window(text: str, anchor: str) -> str:
    words = text.split()
    probe = anchor.split()[:4]
    at = next((i for i in range(len(words)) if words[i : i + len(probe)] == probe), 0)
    start = max(0, at - WINDOW // 3)
    return " ".join(words[start : start + WINDOW])


def pairs(n: int, evidence_sentences: int = 0, settings: Settings | None = None):
    from feedback.trainset import PairRow
    from generation.citations import Source, SpanEncoder
    from generation.prompt import PROMPT_FORMAT, REFUSAL, build_messages, with_excerpts
    from retrieval.embedder import load_embedder

    spans = SpanEncoder(load_embedder(settings or Settings()).embed) if evidence_sentences else None

    corpus = {d["_id"]: d for d in map(json.loads, (COVIDQA / "corpus.jsonl").read_text().splitlines())}
    doc_ids = sorted(corpus)
    out = []
    for i, line in enumerate((COVIDQA / "questions_dev.jsonl").read_text().splitlines()[:n]):
        row = json.loads(line)
        reference_doc = row["reference_doc_ids"][0]
        others = [d for d in doc_ids[i % len(doc_ids) :] + doc_ids if d != reference_doc][:2]
        texts = [window(corpus[reference_doc]["text"], row["reference"])] + [window(corpus[d]["text"], "") for d in others]
        # Ids unique per window: they key SpanEncoder's sentence cache.
        sources = [Source(k, f"{d}@{row['id']}", d, corpus[d].get("title", ""), t) for k, (d, t) in enumerate(zip([reference_doc, *others], texts), start=1)]
        if spans is not None:
            sources = with_excerpts(sources, spans.closest_sentences(row["user_input"], sources, evidence_sentences))
        messages = build_messages(row["user_input"], sources)
        chosen = f"{row['reference'].rstrip('.')} [1]."
        out.append(PairRow(row["id"], row["user_input"], tuple((m["role"], m["content"]) for m in messages), PROMPT_FORMAT, chosen, REFUSAL, "correction", 1.0, row["id"], ()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast (default: where the hardware has it)")
    parser.add_argument("--evidence-sentences", type=int, default=0, help="show each source as its N sentences closest to the question")
    parser.add_argument("--data-dir", type=Path, default=REPO / "var")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    from transformers import AutoTokenizer

    from feedback.train_generator import GeneratorTrainingArgs, train_adapter
    from generation.models import resolve_generator, safetensors_cache

    settings = Settings(data_dir=options.data_dir)
    base = safetensors_cache(resolve_generator(options.generator, settings), settings)
    rows = pairs(options.pairs, options.evidence_sentences, settings)
    tokenizer = AutoTokenizer.from_pretrained(base)
    rendered = [tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False) for r in rows]
    prompt_tokens = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered]
    args = GeneratorTrainingArgs(epochs=options.epochs, max_steps=options.max_steps, bf16=options.bf16)
    with tempfile.TemporaryDirectory() as out:
        figures = train_adapter(rows, base, Path(out), args)
    import torch

    report = {
        "generator": options.generator,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
        "mean_prompt_tokens": round(sum(prompt_tokens) / len(prompt_tokens)),
        "evidence_sentences": options.evidence_sentences,
        "args": args.as_params(),
        **figures,
        "seconds_per_step": round(figures["train_seconds"] / max(figures["steps"], 1), 2),
    }
    print(json.dumps(report, indent=2))
    if options.json:
        options.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
