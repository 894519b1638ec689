"""Inference engines behind one interface: chat messages in, answer text streamed out, token by token.

- `LlamaCppGenerator` serves a GGUF with llama.cpp (decoding is memory-bound on a CPU: the quantised GGUF
  reads ~0.5 GB per token where fp32 reads ~2.5 GB);
- `TransformersGenerator` serves a transformers folder (the GGUF's safetensors cache, or a user's model).
Both use the model's own chat template and the same sampling settings.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import citeloop  # noqa: F401  (offline switches first)
from citeloop.config import Settings, get_settings
from citeloop.files import sha256_file_once
from citeloop.lru import LRUCache
from generation.models import GeneratorWeights, resolve_generator, safetensors_cache


# A registry version of kind `generator` is a folder holding the LoRA adapter GGUF under this name.
ADAPTER_GGUF = "adapter.gguf"


class GenerationError(RuntimeError):
    """The generator failed or ran out of time; what it produced is not an answer."""


class GenerationTimeout(GenerationError):
    """The answer was not finished within CITELOOP_GENERATION_TIMEOUT_S."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> SamplingParams:
        return cls(settings.max_new_tokens, settings.temperature, settings.top_p, settings.seed, settings.generation_timeout_s)


class Generator(Protocol):
    model_id: str  # name@digest: names the exact weights that wrote an answer
    engine: str

    def count_tokens(self, text: str) -> int: ...

    def stream(self, messages: list[dict[str, str]], params: SamplingParams) -> Iterator[str]: ...


def _threads(settings: Settings) -> int:
    return settings.generator_threads or os.cpu_count() or 1


def check_adapter(adapter: Path, base: Path) -> None:
    """A LoRA adapter GGUF that fits the base GGUF (its architecture and width), or a GenerationError naming the
    file: llama.cpp itself would load a truncated adapter as an empty one and serve the base unchanged."""
    from gguf import GGUFReader

    def field(reader, name):
        return reader.fields[name].contents() if name in reader.fields else None

    try:
        lora = GGUFReader(adapter)
    except (OSError, ValueError) as exc:
        raise GenerationError(f"{adapter}: not a readable GGUF file ({exc})") from exc
    if field(lora, "general.type") != "adapter" or field(lora, "adapter.type") != "lora" or not lora.tensors:
        raise GenerationError(f"{adapter}: not a LoRA adapter GGUF (general.type adapter, adapter.type lora, with tensors)")
    model = GGUFReader(base)
    architecture = field(model, "general.architecture")
    width = field(model, f"{architecture}.embedding_length")
    tensor = next(t for t in lora.tensors if t.name.endswith(".lora_a"))
    if field(lora, "general.architecture") != architecture or int(tensor.shape[0]) != int(width):
        raise GenerationError(
            f"{adapter}: a LoRA adapter for another base model ({field(lora, 'general.architecture')}, width {int(tensor.shape[0])}), "
            f"not for {base.name} ({architecture}, width {width})"
        )


def _llama(weights: GeneratorWeights, settings: Settings, adapter: Path | None, **options):
    """llama.cpp over the GGUF, with a LoRA adapter GGUF applied when given; a file it cannot load is an error
    naming the file (llama.cpp refuses an adapter whose tensors do not fit the base)."""
    from llama_cpp import Llama

    assert weights.gguf is not None
    if adapter is not None:
        check_adapter(adapter, weights.gguf)
    threads = _threads(settings)
    try:
        return Llama(
            model_path=str(weights.gguf),
            lora_path=str(adapter) if adapter else None,
            # The GGUF's own chat template, never a built-in format llama.cpp guesses from it: DPO renders the
            # pairs' prompts with that template (feedback/train_generator.py), so serving must too.
            chat_format="chat_template.default",
            n_threads=threads,
            n_threads_batch=threads,
            seed=settings.seed,
            verbose=False,
            **options,
        )
    except (RuntimeError, ValueError) as exc:
        what = f"the LoRA adapter {adapter}" if adapter else f"the GGUF {weights.gguf}"
        raise GenerationError(f"llama.cpp cannot load {what} over {weights.gguf.name}: {exc}") from exc


class LlamaCppGenerator:
    engine = "llama-cpp"

    def __init__(self, weights: GeneratorWeights, settings: Settings, adapter: Path | None = None):
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise GenerationError(
                "the llama-cpp engine needs llama-cpp-python: pip install 'llama-cpp-python==0.3.36' "
                "(or set CITELOOP_GENERATOR_ENGINE=transformers)"
            ) from exc
        self.model_id = f"{weights.name}@{weights.digest[:12]}" + (f"+lora@{sha256_file_once(adapter)[:12]}" if adapter else "")
        self.llm = _llama(weights, settings, adapter, n_ctx=settings.context_window, n_batch=512)
        self._lock = threading.Lock()  # one llama.cpp context decodes one sequence at a time

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream(self, messages: list[dict[str, str]], params: SamplingParams, response_format: dict | None = None) -> Iterator[str]:
        """The reply as it is decoded; `response_format` {"type": "json_object", "schema"?: ...} constrains it by a
        grammar to JSON (of that schema). The time limit counts from when this call gets the model."""
        with self._lock:
            deadline = time.monotonic() + params.timeout_s
            chunks = self.llm.create_chat_completion(
                messages=messages,
                stream=True,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                response_format=response_format,
            )
            try:
                for chunk in chunks:
                    if time.monotonic() > deadline:
                        raise GenerationTimeout(f"generation took longer than {params.timeout_s:.0f} s")
                    text = chunk["choices"][0]["delta"].get("content")
                    if text:
                        yield text
            except GenerationError:
                raise
            except Exception as exc:  # llama.cpp reports decode failures as plain RuntimeErrors
                raise GenerationError(f"generation failed: {exc}") from exc
            finally:
                chunks.close()


class TransformersGenerator:
    engine = "transformers"

    def __init__(self, weights: GeneratorWeights, settings: Settings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = safetensors_cache(weights, settings)
        torch.set_num_threads(_threads(settings))
        self.model_id = f"{weights.name}@{weights.digest[:12]}"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def stream(self, messages: list[dict[str, str]], params: SamplingParams) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        deadline = time.monotonic() + params.timeout_s
        timed_out = threading.Event()

        class Deadline(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                if time.monotonic() > deadline:
                    timed_out.set()
                    return True
                return False

        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = params.temperature > 0
        kwargs = dict(
            **inputs,
            max_new_tokens=params.max_new_tokens,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_p=params.top_p if sampling else None,
            top_k=None,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([Deadline()]),
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        failure: list[BaseException] = []

        def run() -> None:
            try:
                torch.manual_seed(params.seed)
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # surfaced to the consumer below
                failure.append(exc)
                streamer.end()

        with self._lock:
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            for text in streamer:
                if text:
                    yield text
            worker.join()
        if failure:
            raise GenerationError(f"generation failed: {failure[0]}") from failure[0]
        if timed_out.is_set():
            raise GenerationTimeout(f"generation took longer than {params.timeout_s:.0f} s")


# A server serves one generator (the base, or the base with a collection's adapter); an evaluation compares two.
# Each holds 0.1-2 GB (a GGUF, or fp32 weights).
LOADED_GENERATORS = 3
_loaded: LRUCache[Generator] = LRUCache(LOADED_GENERATORS)


def llama_cpp_logprobs(weights: GeneratorWeights, adapter: Path | None, token_ids: list[int], start: int, settings: Settings) -> list[float]:
    """The log-probability llama.cpp gives each of token_ids[start:] after the tokens before it, through the
    same loader that serves (and the adapter, if any): what "served exactly as trained" is checked with."""
    import numpy as np

    llm = _llama(weights, settings, adapter, n_ctx=len(token_ids) + 8, n_batch=max(len(token_ids), 8), logits_all=True)
    llm.eval(token_ids)
    logits = np.asarray(llm.scores[: len(token_ids)], dtype=np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return [float(logprobs[i - 1, token_ids[i]]) for i in range(start, len(token_ids))]


def engine_for(weights: GeneratorWeights, settings: Settings) -> str:
    if settings.generator_engine != "auto":
        return settings.generator_engine
    return "llama-cpp" if weights.gguf is not None else "transformers"


def load_generator(settings: Settings | None = None, name: str | None = None, adapter: Path | None = None) -> Generator:
    """One loaded generator per model, adapter (a LoRA adapter GGUF, served by llama.cpp), engine and runtime
    configuration (loads take seconds)."""
    settings = settings or get_settings()
    weights = resolve_generator(name or settings.generator, settings)
    engine = engine_for(weights, settings)
    if engine == "llama-cpp" and weights.gguf is None:
        raise GenerationError(f"{weights.hf_dir}: the llama-cpp engine needs a GGUF file; use CITELOOP_GENERATOR_ENGINE=transformers")
    if adapter is not None and engine != "llama-cpp":
        raise GenerationError(f"{adapter}: LoRA adapters are served by llama.cpp over a GGUF; the {engine} engine cannot apply one")
    lora = (str(adapter), sha256_file_once(adapter)) if adapter is not None else None
    key = (weights.digest, lora, engine, settings.context_window, _threads(settings), str(settings.model_cache_dir))
    if engine == "llama-cpp":
        return _loaded.get(key, lambda: LlamaCppGenerator(weights, settings, adapter))
    return _loaded.get(key, lambda: TransformersGenerator(weights, settings))
