"""The one embedder loader: normalised vectors, and ONNX / OpenVINO backends that agree with torch."""

import subprocess
import sys

import numpy as np

from citeloop.config import Settings
from citeloop.hardware import host_embedder_backend, host_rerank_backend
from retrieval.backends import DYNAMIC_INT8
from retrieval.embedder import load_embedder
from tests.conftest import REPO

SENTENCES = ["How do I open a file in Python?", "Foxes are omnivores.", "The mitochondria is the powerhouse of the cell."]


def test_vectors_are_normalised_and_loaders_are_shared(sqlite_settings):
    embedder = load_embedder(sqlite_settings)
    assert load_embedder(sqlite_settings) is embedder
    vectors = embedder.embed(SENTENCES)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    query = embedder.embed_query(SENTENCES[0])
    if embedder.backend in DYNAMIC_INT8:  # activation scales come from the whole batch: a vector moves with its batch-mates
        assert float(query @ vectors[0]) > 0.985
    else:
        np.testing.assert_allclose(query, vectors[0], atol=1e-5)


def test_exported_backends_are_exported_once_per_runtime_and_match_torch(sqlite_settings, tmp_path):
    reference = load_embedder(sqlite_settings.model_copy(update={"embedder_backend": "torch"})).embed(SENTENCES)
    backends = (("onnx", 0.9999), ("onnx-int8", 0.98), ("openvino", 0.9999), ("openvino-bf16", 0.999), ("openvino-int8", 0.98))
    for backend, min_cosine in backends:
        settings = sqlite_settings.model_copy(update={"embedder_backend": backend, "cache_dir": tmp_path / "cache"})
        vectors = load_embedder(settings).embed(SENTENCES)
        assert (vectors * reference).sum(axis=1).min() > min_cosine, backend
    # one export per runtime serves all of its backends
    assert sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "cache").iterdir()) == ["onnx", "openvino"]


def test_auto_backends_use_openvino_only_where_the_cpu_has_its_instructions():
    zen4 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
    cascade_lake = frozenset({"avx2", "avx512f", "avx512_vnni"})
    avx2_only = frozenset({"avx2", "fma"})
    assert (host_embedder_backend(zen4), host_rerank_backend(zen4)) == ("openvino-int8", "openvino-bf16")
    assert (host_embedder_backend(cascade_lake), host_rerank_backend(cascade_lake)) == ("openvino-int8", "onnx-int8")
    assert (host_embedder_backend(avx2_only), host_rerank_backend(avx2_only)) == ("onnx-int8", "onnx-int8")
    # Settings resolve `auto` for this host, so collection names and caches name the backend actually used.
    settings = Settings(embedder_backend="auto", rerank_backend="auto")
    assert (settings.embedder_backend, settings.rerank_backend) == (host_embedder_backend(), host_rerank_backend())


def test_settings_import_no_retrieval_module():
    code = "import sys, citeloop.config; print(sorted(m for m in sys.modules if m.split('.')[0] == 'retrieval'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_loading_the_embedder_prints_no_false_alarm():
    # The backend auto picks on this CPU, loaded in a fresh process as a server worker starts it: the first run
    # may export into an empty cache, the second loads what is cached, as every later start does.
    code = "from citeloop.config import Settings; from retrieval.embedder import load_embedder; load_embedder(Settings())"
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        output = result.stdout + result.stderr
        assert "expected str, bytes or os.PathLike object" not in output and "Could not infer" not in output, output
