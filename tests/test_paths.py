import pytest

from talelab import paths
from talelab.errors import InputError


def test_data_root_prefers_the_flag_then_the_environment(tmp_path, monkeypatch, shared):
    monkeypatch.setenv("TALELAB_DATA", str(shared))
    assert paths.data_root(tmp_path) == tmp_path
    assert paths.data_root() == shared
    monkeypatch.setenv("TALELAB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="TALELAB_DATA=.*nowhere"):
        paths.data_root()


def test_missing_file_under_the_data_root_names_path_and_root(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}/data/tinystories/valid-head.txt: missing"):
        paths.shared_file(paths.TINYSTORIES_VALID, tmp_path)


@pytest.mark.parametrize("relative", [paths.TINYSTORIES_VALID, paths.TINYSTORIES_TRAIN, paths.STORIES260K_MODEL])
def test_without_data_root_or_network_the_hub_fallback_fails_in_one_line_naming_the_rule(relative, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError) as error:
        paths.from_hub(relative)
    message = str(error.value)
    assert "\n" not in message and relative in message and "TALELAB_DATA" in message


def test_user_files_resolve_relative_to_the_working_directory_first(tmp_path, monkeypatch, shared):
    (tmp_path / "data" / "tinystories").mkdir(parents=True)
    local = tmp_path / paths.TINYSTORIES_VALID
    local.write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert paths.resolve_input(paths.TINYSTORIES_VALID).resolve() == local
    assert paths.resolve_input(paths.TINYSTORIES_TRAIN) == shared / paths.TINYSTORIES_TRAIN
