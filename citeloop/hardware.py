"""The inference backends of the sentence-transformers models and the one each CPU gets by default.

`auto` picks per host: OpenVINO's int8 and bf16 only pay where the CPU has the instructions for them (VNNI,
AVX512-BF16 / AMX); elsewhere they ran no faster than torch and ONNX Runtime's dynamic int8 was the fastest
(bench/README.md). Kept apart from `retrieval.backends` so that `citeloop.config` names the backends without
importing the retrieval package.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

RerankBackend = Literal["torch", "onnx", "onnx-int8", "openvino", "openvino-bf16"]
# Static int8 needs calibration text of the model's own input kind; citeloop supplies it for the embedder.
EmbedderBackend = Literal[RerankBackend, "openvino-int8"]

INT8_DOT_PRODUCT = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The x86 feature flags Linux reports for this CPU (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def host_embedder_backend(flags: frozenset[str] | None = None) -> EmbedderBackend:
    return "openvino-int8" if (cpu_flags() if flags is None else flags) & INT8_DOT_PRODUCT else "onnx-int8"


def host_rerank_backend(flags: frozenset[str] | None = None) -> RerankBackend:
    return "openvino-bf16" if (cpu_flags() if flags is None else flags) & NATIVE_BF16 else "onnx-int8"
