"""Files on disk: written under a staging name and renamed into place, and the digests that name their contents.

Every derived file or directory citeloop keeps (index builds, model exports, generator caches) is written through
`staged`, so a reader never sees half of one and a crash leaves either nothing, the previous one or the whole new one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path


@contextmanager
def staged(target: Path, replace: bool) -> Iterator[Path]:
    """A path beside `target` with nothing there yet: the caller writes one file or one directory at it. On a clean
    exit every file and directory written is fsynced, the staging is renamed to `target` and the parent directory
    is fsynced; an error inside removes the staging and leaves `target` as it was.

    A `target` that exists by then is replaced when `replace` (a file atomically; a directory is moved aside first,
    so it is missing between two renames), else kept and the staging discarded: another process made it first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.staging-{uuid.uuid4().hex[:12]}")
    try:
        yield staging
        _fsync_tree(staging)
        _move_into_place(staging, target, replace)
    finally:
        _remove(staging)
    _fsync(target.parent)


def _move_into_place(staging: Path, target: Path, replace: bool) -> None:
    is_dir = staging.is_dir()
    aside = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex[:12]}")
    if replace and is_dir and target.exists():
        with suppress(FileNotFoundError):  # another process moved it first
            os.rename(target, aside)
    try:
        if is_dir or replace:
            # A directory's rename fails onto a non-empty directory; a file's replaces it atomically.
            os.replace(staging, target)
        else:
            os.link(staging, target)  # fails where a file exists, where a rename would overwrite it
    except OSError:
        if not target.exists():
            raise
    finally:
        _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(root: Path) -> None:
    if not root.is_dir():
        _fsync(root)
        return
    for directory, _, names in os.walk(root):
        for name in names:
            _fsync(Path(directory) / name)
        _fsync(Path(directory))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file_once(path: Path) -> str:
    """`sha256_file`, computed once per file state (path, size, modification time) in this process: model
    weights are resolved on every load and hashing a GB-sized file takes seconds."""
    stat = path.stat()
    return _sha256_of_state(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256_of_state(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def artifact_sha256(directory: Path, files: Iterable[Path] | None = None) -> str:
    """The one digest of an artifact directory: every file under it (or only `files`, which lie inside it), in
    path order, as `relative/posix/name NUL sha256-of-contents LF`. The registry stores it for each model version
    and checks it before loading one."""
    directory = Path(directory)
    chosen = (p for p in directory.rglob("*") if p.is_file()) if files is None else (Path(f) for f in files)
    digest = hashlib.sha256()
    # Sorted by path components, as pathlib orders paths: the order the registry's stored digests were made in.
    for relative in sorted((p.relative_to(directory) for p in chosen), key=lambda p: p.parts):
        digest.update(f"{relative.as_posix()}\0{sha256_file(directory / relative)}\n".encode())
    return digest.hexdigest()
