"""The one embedder loader: all-MiniLM-L6-v2 from its PyPI package, verified, offline."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import citeloop  # noqa: F401  (sets HF_HUB_OFFLINE before sentence-transformers is imported)
import numpy as np
from citeloop.config import Settings, get_settings
from citeloop.lru import LRUCache
from citeloop.modelpkg import MINILM
from retrieval.backends import load_with_backend

EMBEDDER_ID = "all-MiniLM-L6-v2"
# Static int8 calibrates activation ranges once, on bundled COVID-QA articles: real prose, and not SciFact, the
# corpus its quality is measured on.
CALIBRATION_CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "covidqa" / "corpus.jsonl"
CALIBRATION_SAMPLES = 300
CALIBRATION_WINDOW_CHARS = 1200


def calibration_texts() -> list[str]:
    """Up to CALIBRATION_SAMPLES chunk-sized windows, taken round-robin over the calibration articles."""
    from retrieval.readers import SourceDocument, read_rows

    if not CALIBRATION_CORPUS.is_file():
        raise FileNotFoundError(f"{CALIBRATION_CORPUS}: the openvino-int8 embedder calibrates on it (shipped in corpora/)")
    articles = [doc.text for doc in read_rows(CALIBRATION_CORPUS) if isinstance(doc, SourceDocument)]
    windows = [
        [text[i : i + CALIBRATION_WINDOW_CHARS] for i in range(0, len(text), CALIBRATION_WINDOW_CHARS)] for text in articles
    ]
    texts = [w[depth] for depth in range(max(map(len, windows), default=0)) for w in windows if depth < len(w)]
    return texts[:CALIBRATION_SAMPLES]


class Embedder:
    """Dense text encoder producing L2-normalised float32 vectors (inner product = cosine)."""

    def __init__(self, settings: Settings):
        from sentence_transformers import SentenceTransformer

        source = MINILM.verified_path()
        self.backend = settings.embedder_backend
        # verified_path checked the weights against this digest: it names them without hashing them again.
        cache_key = f"{EMBEDDER_ID}-{MINILM.checksums['model.safetensors'][:12]}"
        model = load_with_backend(
            SentenceTransformer, source, self.backend, settings.model_cache_dir, cache_key, calibration=calibration_texts
        )
        model.max_seq_length = settings.embed_max_tokens
        self.model = model
        self.batch_size = settings.embed_batch_size
        self.tokenizer = model.tokenizer
        self.dim = model.get_embedding_dimension()
        self.model_id = f"{EMBEDDER_ID}/{self.backend}"
        # Torch modules are not safe to call from several threads at once.
        self._lock = threading.Lock()

    def common_words(self) -> frozenset[str]:
        """The whole words of the tokenizer's vocabulary (WordPiece keeps ~20k of the most frequent English
        words whole and splits rarer ones: names, identifiers, jargon)."""
        return frozenset(t for t in self.tokenizer.get_vocab() if t.isalnum())

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


# A process serves with one configuration; benchmarks and tests compare a few. Each holds a ~90 MB model.
LOADED_EMBEDDERS = 4
_loaded: LRUCache[Embedder] = LRUCache(LOADED_EMBEDDERS)


def load_embedder(settings: Settings | None = None) -> Embedder:
    """Shared embedder instance per configuration (model loads take seconds; do them once)."""
    settings = settings or get_settings()
    key = (settings.embedder_backend, settings.embed_max_tokens, settings.embed_batch_size, str(settings.model_cache_dir))
    return _loaded.get(key, lambda: Embedder(settings))
