"""`lucafound push DIR --repo-id ORG/NAME`: Hub-readiness checks and the dry run, offline."""

import pytest

from modeling_lucafound import cli
from modeling_lucafound.commands.model_card import write_model_card
from modeling_lucafound.commands.push import HubFolderError, check_hub_folder, push_folder
from modeling_lucafound.pipeline_lucafound import add_feature_extraction_pipeline
from saved_folders import save_tiny_lucafound_folder


@pytest.fixture()
def hub_folder(tmp_path):
    folder = save_tiny_lucafound_folder(tmp_path / "tiny")
    add_feature_extraction_pipeline(folder)
    write_model_card(folder)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.bin").write_bytes(b"state")
    return folder


def test_dry_run_lists_the_model_files_and_leaves_training_state_out(hub_folder, capsys):
    assert cli.main(["push", str(hub_folder), "--repo-id", "my-lab/lucafound-tiny", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("would upload")
    for name in ("config.json", "model.safetensors", "README.md", "preprocessor_config.json", "modeling_lucafound.py",
                 "pipeline_lucafound.py"):
        assert f"  {name}\n" in printed
    assert "optimizer.bin" not in printed


def test_push_creates_the_repository_and_uploads_the_folder_through_huggingface_hub(hub_folder):
    calls = []

    class RecordingApi:
        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return "https://huggingface.co/my-lab/lucafound-tiny/commit/abc"

    result = push_folder(hub_folder, "my-lab/lucafound-tiny", private=True, api=RecordingApi())
    assert [name for name, _ in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1]["private"] is True and calls[0][1]["exist_ok"] is True
    assert calls[1][1]["folder_path"] == str(hub_folder) and "checkpoints/*" in calls[1][1]["ignore_patterns"]
    assert result["url"].endswith("/commit/abc")


def test_folder_without_model_card_is_refused_with_the_command_to_write_one(hub_folder):
    (hub_folder / "README.md").unlink()
    with pytest.raises(HubFolderError, match="lucafound model-card"):
        check_hub_folder(hub_folder)


def test_folder_missing_remote_code_is_refused(hub_folder):
    (hub_folder / "modeling_lucafound.py").unlink()
    with pytest.raises(HubFolderError, match="modeling_lucafound.py"):
        check_hub_folder(hub_folder)


def test_bad_repo_id_is_an_input_error(hub_folder, capsys):
    assert cli.main(["push", str(hub_folder), "--repo-id", "no-slash", "--dry-run"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err
