"""Staged writes (write beside the target, fsync, rename into place) and the one artifact digest."""

import pytest

from citeloop.files import artifact_sha256, staged


def write_tree(root, files: dict[str, str]) -> None:
    root.mkdir()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def read_tree(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_staged_directory_appears_complete_under_its_name(tmp_path):
    target = tmp_path / "cache" / "export"
    with staged(target, replace=False) as staging:
        assert staging.parent == target.parent and not staging.exists()
        write_tree(staging, {"model.onnx": "weights", "sub/config.json": "{}"})
        assert not target.exists()  # nothing under the final name until the block ends
    assert read_tree(target) == {"model.onnx": "weights", "sub/config.json": "{}"}
    assert [p.name for p in target.parent.iterdir()] == ["export"]


@pytest.mark.parametrize("replace", [False, True])
def test_a_failure_inside_leaves_neither_target_nor_staging(tmp_path, replace):
    target = tmp_path / "export"
    with pytest.raises(RuntimeError, match="export failed"):
        with staged(target, replace=replace) as staging:
            write_tree(staging, {"half.onnx": "half"})
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_inside_keeps_the_existing_target(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_text("old")
    with pytest.raises(ValueError):
        with staged(target, replace=True) as staging:
            staging.write_text("corrupt")
            raise ValueError("digest mismatch")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_replace_swaps_an_existing_directory_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "export"
    write_tree(target, {"old.onnx": "old"})
    with staged(target, replace=True) as staging:
        write_tree(staging, {"new.onnx": "new"})
    assert read_tree(target) == {"new.onnx": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_keep_leaves_an_existing_directory_and_discards_the_staging(tmp_path):
    target = tmp_path / "export"
    with staged(target, replace=False) as staging:
        write_tree(staging, {"mine.onnx": "mine"})
        write_tree(target, {"theirs.onnx": "theirs"})  # another process finished first
    assert read_tree(target) == {"theirs.onnx": "theirs"}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


@pytest.mark.parametrize(("replace", "expected"), [(True, "new"), (False, "old")])
def test_a_staged_file_replaces_or_keeps_an_existing_one(tmp_path, replace, expected):
    target = tmp_path / "model.gguf"
    target.write_text("old")
    with staged(target, replace=replace) as staging:
        staging.write_text("new")
    assert target.read_text() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_the_artifact_digest_keeps_the_registry_format(tmp_path):
    # Digests stored for registered versions must still verify: this value is the registry's earlier format
    # (relative POSIX name, NUL, file sha256, newline; paths in pathlib order, where "a/b" sorts before "a-c/d").
    write_tree(tmp_path / "artifact", {"a/b": "one", "a-c/d": "two", "z.txt": "three"})
    assert artifact_sha256(tmp_path / "artifact") == "3a0ecde23b6ee0ccb6a73b58afe1db5dbaed5dc47c3f1ae2ef5319238da4faa4"
    # A chosen subset digests as a directory holding only those files.
    write_tree(tmp_path / "subset", {"a/b": "one", "z.txt": "three"})
    chosen = [tmp_path / "artifact" / "z.txt", tmp_path / "artifact" / "a" / "b"]
    assert artifact_sha256(tmp_path / "artifact", chosen) == artifact_sha256(tmp_path / "subset")
    (tmp_path / "subset" / "z.txt").write_text("changed")
    assert artifact_sha256(tmp_path / "artifact", chosen) != artifact_sha256(tmp_path / "subset")
