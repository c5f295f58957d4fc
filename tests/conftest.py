"""Shared test set-up: offline hub, the real-CT fixture folder, small deterministic defaults."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _test_data_folder():
    configured = os.environ.get("LUCAFOUND_TEST_DATA")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def test_data_dir():
    """Folder with the shared real CT and the Swin3D reference outputs.

    Under CI (`CI` set) a missing folder is a failure, never a skip: those tests must run there.
    """
    folder = _test_data_folder()
    if not (folder / "lung1_image.nrrd").exists():
        message = f"shared test data not found at {folder} (set LUCAFOUND_TEST_DATA to ../shared/fixtures)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def swin3d_reference_dir(test_data_dir):
    folder = test_data_dir / "swin3d_reference"
    if not folder.is_dir():
        pytest.fail(f"{folder} is missing from the shared test data")
    return folder
