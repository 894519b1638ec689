"""The judge behind ragas' LLM-based metrics, offline: a local GGUF generator served in-process by llama.cpp, or
any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama) at a URL.

The local judge decodes greedily and under a grammar: each ragas prompt states the JSON schema of its answer,
and llama.cpp is constrained to that schema, so a small model's reply parses. Each call has its own time limit,
counted from when it gets the model (calls queue for one llama.cpp context). The metrics are ragas' own, with
citeloop's MiniLM as the embeddings `ResponseRelevancy` compares questions with:
`faithfulness`, `answer_relevancy`, `llm_context_precision_with_reference`, `context_recall`,
`factual_correctness` (their ragas names).
"""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from dataclasses import dataclass, field

from citeloop.config import Settings, get_settings

# ragas' PydanticPrompt states its output schema as one line of JSON between these phrases.
PROMPT_SCHEMA = re.compile(r"following schema as specified in JSON Schema:\n(\{.*?\})Do not use single quotes", re.DOTALL)
JUDGE_METRICS = ("faithfulness", "answer_relevancy", "llm_context_precision_with_reference", "context_recall", "factual_correctness")
# One try per judge call: a local judge on 2 cores is too slow to repeat what ragas' default (10 tries, exponential
# waits) would; its metrics' output parser still re-asks once to repair a malformed reply.
JUDGE_RETRIES = 1
# ResponseRelevancy asks for 3 questions per answer by default; one keeps it one call per row.
RELEVANCY_QUESTIONS = 1


# Lists in a judge's reply (statements, verdicts) are capped: a small model under a grammar can otherwise repeat
# one item until max_tokens cuts the JSON short. The cap is a truncation: faithfulness judges an answer's first 12
# statements, context recall a reference's first 12 sentences. They hold one item at least: an answer states
# something and a reference has a sentence, and ragas scores an empty list NaN.
MAX_LIST_ITEMS = 12


def _bounded(schema):
    if isinstance(schema, dict):
        out = {key: _bounded(value) for key, value in schema.items()}
        if out.get("type") == "array":
            out.setdefault("maxItems", MAX_LIST_ITEMS)
            out.setdefault("minItems", 1)
        return out
    if isinstance(schema, list):
        return [_bounded(item) for item in schema]
    return schema


def prompt_schema(prompt: str) -> dict | None:
    """The JSON schema a ragas prompt asks its answer to comply with, if it states one (its lists capped)."""
    match = PROMPT_SCHEMA.search(prompt)
    if match is None:
        return None
    try:
        return _bounded(json.loads(match.group(1)))
    except json.JSONDecodeError:
        return None


def _ragas_llm_base():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.llms.base import BaseRagasLLM

    return BaseRagasLLM


def local_judge(name: str | None = None, settings: Settings | None = None, max_tokens: int = 1024, timeout_s: float = 300.0):
    """ragas' LLM interface over a local generator (default: the configured one), greedy and schema-constrained."""
    from langchain_core.outputs import Generation, LLMResult
    from ragas.run_config import RunConfig

    from generation.engines import GenerationError, LlamaCppGenerator, SamplingParams, load_generator

    settings = settings or get_settings()
    generator = load_generator(settings, name)
    if not isinstance(generator, LlamaCppGenerator):
        raise GenerationError(f"the local judge runs on llama.cpp: {generator.model_id} is not a GGUF generator")

    @dataclass
    class LocalJudge(_ragas_llm_base()):
        model_id: str = generator.model_id
        run_config: RunConfig = field(default_factory=lambda: RunConfig(max_retries=JUDGE_RETRIES))

        def generate_text(self, prompt, n=1, temperature=0.01, stop=None, callbacks=None) -> LLMResult:
            text = prompt.to_string()
            schema = prompt_schema(text)
            response_format = {"type": "json_object", **({"schema": schema} if schema else {})}
            # Greedy for one answer; several differ only when sampled (seeds apart).
            replies = [
                "".join(generator.stream(
                    [{"role": "user", "content": text}],
                    SamplingParams(max_tokens, temperature if n > 1 else 0.0, 1.0, settings.seed + i, timeout_s),
                    response_format,
                ))
                for i in range(n)
            ]
            return LLMResult(generations=[[Generation(text=reply) for reply in replies]])

        async def agenerate_text(self, prompt, n=1, temperature=0.01, stop=None, callbacks=None) -> LLMResult:
            return await asyncio.to_thread(self.generate_text, prompt, n, temperature or 0.01, stop, callbacks)

        def is_finished(self, response: LLMResult) -> bool:
            return True  # a reply cut at max_tokens fails to parse, and is counted as the metric's failure

    return LocalJudge()


def remote_judge(url: str, model: str, max_tokens: int = 1024, timeout_s: float = 300.0):
    """ragas' LLM interface over an OpenAI-compatible server (`url` ends in /v1), greedy, in JSON mode."""
    from langchain_openai import ChatOpenAI
    from ragas.run_config import RunConfig

    import httpx

    try:  # a server that does not answer is an error now, not a failure on every row after the answers
        httpx.get(f"{url.rstrip('/')}/models", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise ValueError(f"the judge at {url} does not answer GET {url.rstrip('/')}/models ({exc})") from None
    # JSON mode: ragas parses every reply as JSON; vLLM, llama.cpp's server and Ollama all honour it. The length
    # cap goes as OpenAI's newer max_completion_tokens and as max_tokens, the one llama.cpp's server reads.
    chat = ChatOpenAI(
        base_url=url, model=model, api_key="not-needed", temperature=0.0, max_tokens=max_tokens, timeout=timeout_s, max_retries=0,
        model_kwargs={"response_format": {"type": "json_object"}}, extra_body={"max_tokens": max_tokens},
    )
    with warnings.catch_warnings():  # deprecated in ragas 0.4, the wrapper still serves the legacy metrics used here
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.llms import LangchainLLMWrapper

        return LangchainLLMWrapper(chat, run_config=RunConfig(max_retries=JUDGE_RETRIES))


def minilm_embeddings(settings: Settings | None = None):
    """citeloop's embedder (the bundled MiniLM) behind ragas' embeddings interface."""
    from ragas.embeddings.base import BaseRagasEmbeddings
    from ragas.run_config import RunConfig

    from retrieval.embedder import load_embedder

    embedder = load_embedder(settings)

    class MiniLMEmbeddings(BaseRagasEmbeddings):
        def __init__(self):
            super().__init__()
            self.run_config = RunConfig(max_retries=JUDGE_RETRIES)

        def embed_query(self, text: str) -> list[float]:
            return embedder.embed_query(text).tolist()

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embedder.embed(list(texts)).tolist()

        async def aembed_query(self, text: str) -> list[float]:
            return self.embed_query(text)

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.embed_documents(texts)

    return MiniLMEmbeddings()


def check_metric_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names`, or all judged metrics when empty; an unknown name is a ValueError listing the known ones."""
    unknown = [n for n in names if n not in JUDGE_METRICS]
    if unknown:
        raise ValueError(f"unknown judge metric(s) {', '.join(unknown)}; available: {', '.join(JUDGE_METRICS)}")
    return names or JUDGE_METRICS


def judge_metrics(llm, embeddings, names: tuple[str, ...] = JUDGE_METRICS) -> list:
    """ragas' LLM-based metrics by name, judged by `llm`."""
    names = check_metric_names(names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.metrics import FactualCorrectness, Faithfulness, LLMContextPrecisionWithReference, LLMContextRecall, ResponseRelevancy

    made = {
        "faithfulness": lambda: Faithfulness(llm=llm),
        "answer_relevancy": lambda: ResponseRelevancy(llm=llm, embeddings=embeddings, strictness=RELEVANCY_QUESTIONS),
        "llm_context_precision_with_reference": lambda: LLMContextPrecisionWithReference(llm=llm),
        "context_recall": lambda: LLMContextRecall(llm=llm),
        "factual_correctness": lambda: FactualCorrectness(llm=llm),
    }
    return [made[n]() for n in names]
