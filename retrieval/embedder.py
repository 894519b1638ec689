"""The one embedder loader: all-MiniLM-L6-v2 from its PyPI package, verified, offline."""

from __future__ import annotations

import os
import shutil
import threading
from functools import lru_cache
from pathlib import Path

import citeloop  # noqa: F401  (sets HF_HUB_OFFLINE before sentence-transformers is imported)
import numpy as np
from citeloop.config import Settings, get_settings
from citeloop.modelpkg import MINILM, sha256_file

EMBEDDER_ID = "all-MiniLM-L6-v2"


def _int8_target() -> str:
    """The int8 kernel family of this CPU: VNNI dot-product instructions make int8 ~2.5x faster than fp32 torch."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "avx2"
    return "avx512_vnni" if " avx512_vnni" in flags or " avx_vnni" in flags else "avx2"


INT8_TARGET = _int8_target()
# ONNX Runtime exports: fp32, and int8 dynamic quantisation for this CPU (faster, slightly different vectors).
ONNX_FILES = {
    "onnx": "onnx/model.onnx",
    "onnx-int8": "onnx/model_qint8_avx512_vnni.onnx" if INT8_TARGET == "avx512_vnni" else "onnx/model_quint8_avx2.onnx",
}


class Embedder:
    """Dense text encoder producing L2-normalised float32 vectors (inner product = cosine)."""

    def __init__(self, settings: Settings):
        from sentence_transformers import SentenceTransformer

        source = MINILM.verified_path()
        self.backend = settings.embedder_backend
        if self.backend in ONNX_FILES:
            model = SentenceTransformer(
                str(_onnx_copy(source, settings)),
                device="cpu",
                backend="onnx",
                model_kwargs={"file_name": ONNX_FILES[self.backend]},
            )
        else:
            model = SentenceTransformer(str(source), device="cpu")
        model.max_seq_length = settings.embed_max_tokens
        self.model = model
        self.batch_size = settings.embed_batch_size
        self.tokenizer = model.tokenizer
        self.dim = model.get_embedding_dimension()
        self.model_id = f"{EMBEDDER_ID}/{self.backend}"
        # Torch modules are not safe to call from several threads at once.
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return _cached_query_vector(self, text)


@lru_cache(maxsize=4096)
def _cached_query_vector(embedder: Embedder, text: str) -> np.ndarray:
    vector = embedder.embed([text])[0]
    vector.setflags(write=False)
    return vector


def _onnx_copy(source, settings: Settings):
    """Export the verified weights to ONNX (fp32 and int8) once, into the shared model cache."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    target = settings.model_cache_dir / f"{EMBEDDER_ID}-{sha256_file(source / 'model.safetensors')[:12]}-onnx"
    if all((target / name).is_file() for name in ONNX_FILES.values()):
        return target
    staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    exported = SentenceTransformer(str(staging), device="cpu", backend="onnx")
    exported.save_pretrained(str(staging))
    export_dynamic_quantized_onnx_model(exported, INT8_TARGET, str(staging))
    (staging / "model.safetensors").unlink()
    # A cache exported on another CPU lacks this CPU's int8 file and is replaced; if another process
    # finished the same export first, its copy is as good as ours.
    shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_instances: dict[tuple, Embedder] = {}
_instances_lock = threading.Lock()


def load_embedder(settings: Settings | None = None) -> Embedder:
    """Shared embedder instance per configuration (model loads take seconds; do them once)."""
    settings = settings or get_settings()
    key = (settings.embedder_backend, settings.embed_max_tokens, settings.embed_batch_size, str(settings.model_cache_dir))
    with _instances_lock:
        if key not in _instances:
            _instances[key] = Embedder(settings)
        return _instances[key]
