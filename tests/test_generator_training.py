"""DPO with a LoRA adapter on the small real generator (SmolLM2-135M): TRL trains the adapter on the safetensors
cache, llama.cpp's converter makes it a GGUF LoRA, and llama.cpp serving that adapter over the shipped GGUF gives
a fixed answer the log-probabilities transformers + peft give it (served exactly as trained). Bad adapters are
clear errors naming the file."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from citeloop.config import Settings
from feedback.train_generator import (
    GeneratorTrainingArgs,
    GeneratorTrainingError,
    adapter_to_gguf,
    peft_logprobs,
    prompt_token_ids,
    served_prompt_matches,
    train_adapter,
)
from feedback.trainset import PairRow
from generation.citations import Source
from generation.engines import ADAPTER_GGUF, GenerationError, LlamaCppGenerator, SamplingParams, llama_cpp_logprobs
from generation.models import resolve_generator, safetensors_cache
from generation.prompt import PROMPT_FORMAT, REFUSAL, build_messages

pytestmark = pytest.mark.slow

# Per-token disagreement allowed between llama.cpp and transformers on the same weights: llama.cpp multiplies the
# 4-bit weights with activations it quantises to 8 bits; measured ~0.03 nats/token mean, 0.31 at most.
MEAN_TOLERANCE = 0.1


def pair(i: int) -> PairRow:
    source = Source(1, f"c{i}", f"d{i}", f"Release {i}", f"Release {i} of the parser reads configuration files in TOML.")
    messages = build_messages(f"Which files does release {i} read?", [source])
    return PairRow(
        f"q{i}", f"Which files does release {i} read?", tuple((m["role"], m["content"]) for m in messages), PROMPT_FORMAT,
        f"Release {i} reads configuration files in TOML [1].", REFUSAL, "correction", 1.0, f"a{i}", (f"e{i}",),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("dpo") / "var", generator="smollm2-135m")
    weights = resolve_generator("smollm2-135m", settings)
    base = safetensors_cache(weights, settings)
    out = tmp_path_factory.mktemp("adapter")
    steps = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    args = GeneratorTrainingArgs(max_steps=3, batch_size=2, gradient_accumulation=1, learning_rate=2e-3)
    figures = train_adapter([pair(i) for i in range(6)], base, out, args, callbacks=[Steps()])
    gguf = adapter_to_gguf(out, base, out / ADAPTER_GGUF)
    return settings, weights, base, out, gguf, figures, steps


def test_dpo_trains_an_adapter_that_prefers_the_chosen_answers(trained):
    _, _, _, out, gguf, figures, steps = trained
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file() and gguf.stat().st_size > 0
    assert figures["steps"] == 3 and steps == [1, 2, 3] and figures["pairs"] == 6
    assert figures["final_reward_margin"] > 0  # the chosen answers gained on the rejected ones against the reference


def test_the_served_adapter_gives_the_log_probabilities_it_was_trained_to(trained):
    settings, weights, base, out, gguf, _, _ = trained
    messages = pair(7).messages  # a prompt it never trained on
    assert served_prompt_matches(base, weights.gguf, messages)  # llama.cpp renders the prompt as training did
    ids, start = prompt_token_ids(base, messages, "Release 7 reads configuration files in TOML [1].")
    trained_lp = peft_logprobs(base, out, ids, start)
    served_lp = llama_cpp_logprobs(weights, gguf, ids, start, settings)
    base_lp = llama_cpp_logprobs(weights, None, ids, start, settings)
    disagreement = sum(abs(a - b) for a, b in zip(trained_lp, served_lp)) / len(ids[start:])
    shift = sum(abs(a - b) for a, b in zip(served_lp, base_lp)) / len(ids[start:])
    assert disagreement <= MEAN_TOLERANCE
    assert shift > 3 * disagreement  # the adapter is applied: without it the answer scores measurably otherwise
    assert sum(served_lp) > sum(base_lp)  # and it made the preferred kind of answer likelier
    generator = LlamaCppGenerator(weights, settings, adapter=gguf)
    assert "+lora@" in generator.model_id
    assert "".join(generator.stream(messages, SamplingParams(max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, timeout_s=60)))


def test_bad_adapters_are_clear_errors_naming_the_file(trained, tmp_path):
    settings, weights, _, _, gguf, _, _ = trained
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(GenerationError, match="corrupt.gguf: not a readable GGUF"):
        LlamaCppGenerator(weights, settings, adapter=corrupt)
    with pytest.raises(GenerationError, match="not a LoRA adapter"):  # a GGUF, but a model, not an adapter
        LlamaCppGenerator(weights, settings, adapter=weights.gguf)
    qwen = resolve_generator("qwen2.5-0.5b-instruct", settings)
    with pytest.raises(GenerationError, match=f"{ADAPTER_GGUF}: a LoRA adapter for another base model"):  # trained on SmolLM2
        LlamaCppGenerator(qwen, settings, adapter=gguf)
    with pytest.raises(GeneratorTrainingError, match="no preference pairs"):
        train_adapter([], tmp_path, tmp_path / "out")
    with pytest.raises(GeneratorTrainingError, match="converting the adapter"):
        adapter_to_gguf(tmp_path, tmp_path, tmp_path / "x.gguf")
