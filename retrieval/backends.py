"""Inference backends of sentence-transformers models (bi- and cross-encoders), exported once into the cache.

Both `SentenceTransformer` and `CrossEncoder` take `backend="onnx"` and `backend="openvino"`; the fp32 exports give
the same scores as torch. `onnx-int8` is ONNX Runtime's BERT graph fusion (attention, GELU, skip-layer-norm as
single kernels) followed by dynamic int8 quantisation with one scale per weight column: SciFact hybrid nDCG@10
-0.0011 vs fp32, where sentence-transformers' per-tensor export cost 0.0067. `openvino-bf16` asks OpenVINO's CPU
plugin for bfloat16 inference, which it uses where the CPU computes in bf16 natively (AVX512-BF16 or AMX) and
ignores elsewhere (fp32): the fastest backend measured on 2 cores with vectors at cosine >= 0.9999 to torch.
`openvino-int8` (bi-encoders only) is OpenVINO's post-training static int8 (NNCF through optimum-intel's
`OVQuantizer`), calibrated once on texts the caller supplies (bench/README.md). Which one `auto` picks on a CPU:
`citeloop.hardware`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from citeloop.files import staged
from citeloop.hardware import EmbedderBackend

# backend -> (sentence-transformers backend of the export, file of that export it runs, OpenVINO precision hint)
EXPORTS: dict[str, tuple[str, str, str | None]] = {
    "onnx": ("onnx", "onnx/model.onnx", None),
    "onnx-int8": ("onnx", "onnx/model_fused_qint8_per_channel.onnx", None),
    "openvino": ("openvino", "openvino/openvino_model.xml", "f32"),
    "openvino-bf16": ("openvino", "openvino/openvino_model.xml", "bf16"),
    "openvino-int8": ("openvino", "openvino-int8/openvino/openvino_model.xml", None),
}
CALIBRATION_MAX_TOKENS = 256
# ONNX Runtime quantises activations per call: a text's int8 vector depends a little on the texts batched with it
# (cosine 0.991-0.995 alone vs in a batch of three), an effect the measured nDCG@10 of onnx-int8 already includes.
DYNAMIC_INT8 = frozenset({"onnx-int8"})


class _OfflineExportCheckFalseAlarm(logging.Filter):
    """Drops optimum-intel's warning that it "could not infer whether the model was already converted" when the
    cause is the TypeError of its offline branch. With HF_HUB_OFFLINE (set by citeloop) optimum-intel 1.27 treats
    every model id as a hub id and joins it to `cache_dir`, which sentence-transformers passes as None, even for a
    local directory (optimum's ONNX Runtime loader checks `os.path.isdir` first). The check it abandons is redundant:
    sentence-transformers has already decided `export` from the files in the directory, and that value is kept.
    No argument avoids it: offline mode forces the branch, and a real cache_dir only changes the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Could not infer whether the model was already converted or not to the OpenVINO IR")
            and message.endswith("\nexpected str, bytes or os.PathLike object, not NoneType")
        )


logging.getLogger("optimum.intel.openvino.modeling_base").addFilter(_OfflineExportCheckFalseAlarm())
# Exports go to a staging folder that load_with_backend saves and renames itself: sentence-transformers' warnings
# that it is exporting ("No 'openvino_model.xml' found") and that saving is recommended describe exactly that.
logging.getLogger("sentence_transformers.backend.utils").setLevel(logging.ERROR)


def load_with_backend(
    model_class, source: Path, backend: EmbedderBackend, cache_dir: Path, cache_key: str, calibration: Callable[[], list[str]] | None = None, **kwargs
):
    """`model_class(source)` on torch, or on ONNX Runtime / OpenVINO from an export cached under `cache_dir`;
    `calibration` gives the texts `openvino-int8` is calibrated on (called once, when the int8 file is made)."""
    if backend == "torch":
        return model_class(str(source), device="cpu", **kwargs)
    if backend not in EXPORTS:
        raise ValueError(f"unknown backend '{backend}'; one of torch, {', '.join(EXPORTS)}")
    family, file_name, precision = EXPORTS[backend]
    exported = _exported(model_class, source, cache_dir / f"{cache_key}-{family}", family)
    if backend == "openvino-int8" and not (exported / file_name).is_file():
        if calibration is None:
            raise ValueError("backend 'openvino-int8' needs calibration texts; this model supports the other backends")
        _quantize_static(model_class, exported, calibration())
    model_kwargs: dict = {"file_name": file_name}
    if precision is not None:
        model_kwargs["ov_config"] = {"INFERENCE_PRECISION_HINT": precision}
    return model_class(str(exported), device="cpu", backend=family, model_kwargs=model_kwargs, **kwargs)


def _exported(model_class, source: Path, target: Path, family: str) -> Path:
    files = {name for backend, (fam, name, _) in EXPORTS.items() if fam == family and backend != "openvino-int8"}
    if all((target / name).is_file() for name in files):
        return target
    # A cache exported by an older citeloop lacks the current files and is replaced; if another process
    # finished the same export first, either copy is as good as the other.
    with staged(target, replace=True) as staging:
        shutil.copytree(source, staging)
        model = model_class(str(staging), device="cpu", backend=family)
        model.save_pretrained(str(staging))
        if family == "onnx":
            _fuse_and_quantize(staging)
        for weights in ("model.safetensors", "pytorch_model.bin"):
            (staging / weights).unlink(missing_ok=True)
    return target


def _quantize_static(model_class, exported: Path, texts: list[str]) -> None:
    """NNCF post-training int8 of the OpenVINO export, calibrated on `texts`, written beside the fp32 IR."""
    from datasets import Dataset
    from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer

    model = model_class(str(exported), device="cpu", backend="openvino", model_kwargs={"file_name": EXPORTS["openvino"][1]})
    features = model.tokenizer(texts, padding="max_length", max_length=CALIBRATION_MAX_TOKENS, truncation=True)
    target = exported / Path(EXPORTS["openvino-int8"][1]).parts[0]
    with staged(target, replace=False) as staging:  # kept: another process quantised it first
        OVQuantizer.from_pretrained(model.transformers_model).quantize(
            calibration_dataset=Dataset.from_dict(dict(features)),
            save_directory=str(staging),
            ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(texts))),
        )


def _fuse_and_quantize(model_dir: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((model_dir / "config.json").read_text())
    fused = model_dir / "onnx" / "model_fused.onnx"
    optimize_model(
        str(model_dir / EXPORTS["onnx"][1]), model_type="bert", num_heads=config["num_attention_heads"], hidden_size=config["hidden_size"]
    ).save_model_to_file(str(fused))
    quantize_dynamic(
        str(fused),
        str(model_dir / EXPORTS["onnx-int8"][1]),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # The fused operators are outside ONNX's type inference; their outputs are float tensors.
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    fused.unlink()
