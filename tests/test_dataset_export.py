"""Tests of the Parquet / Hub export: volumes embedded, features intact when loaded with the generic loader."""

import json

import numpy as np
import pytest

from datasets_scripts import SyntheticLungCT
from datasets_scripts.export import export_to_parquet, load_exported, main, push_dataset_to_hub


@pytest.fixture(scope="module")
def raw_synthetic(tmp_path_factory):
    builder = SyntheticLungCT(
        config_name="raw", num_samples=4, phantom_shape=(16, 40, 40), cache_dir=str(tmp_path_factory.mktemp("cache"))
    )
    builder.download_and_prepare()
    return builder.as_dataset()


def test_parquet_export_loads_back_with_the_same_features(raw_synthetic, tmp_path):
    export_to_parquet(raw_synthetic, tmp_path / "export", config_name="raw")
    loaded = load_exported(tmp_path / "export", config_name="raw")
    assert set(loaded) == set(raw_synthetic)
    assert loaded["train"].features == raw_synthetic["train"].features
    assert loaded["train"]["report"] == raw_synthetic["train"]["report"]


def test_exported_nifti_volumes_are_embedded_and_identical(raw_synthetic, tmp_path):
    export_to_parquet(raw_synthetic, tmp_path / "export", config_name="raw")
    loaded = load_exported(tmp_path / "export", config_name="raw")
    original, restored = raw_synthetic["train"][0]["image"], loaded["train"][0]["image"]
    np.testing.assert_array_equal(np.asarray(restored.dataobj), np.asarray(original.dataobj))
    np.testing.assert_allclose(restored.affine, original.affine)


def test_export_writes_a_card_with_the_configs_block(raw_synthetic, tmp_path):
    export_to_parquet(raw_synthetic, tmp_path / "export", config_name="raw")
    card = (tmp_path / "export" / "README.md").read_text()
    assert "- config_name: raw" in card and "path: data/raw/train-*.parquet" in card
    assert not list((tmp_path / "export").rglob("*.tmp"))


def test_push_dry_run_reports_rows_and_features_without_uploading(raw_synthetic):
    plan = push_dataset_to_hub(raw_synthetic, "lucafound/synthetic-lung-ct", config_name="raw", dry_run=True)
    assert plan["splits"]["train"]["rows"] == len(raw_synthetic["train"])
    assert "Nifti" in plan["features"]["image"]


def test_command_line_exports_a_preprocessed_cohort(tmp_path, capsys):
    code = main(
        [
            "synthetic",
            "preprocessed",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--num-samples",
            "3",
            "--image-size",
            "12",
            "16",
            "16",
        ]
    )
    assert code == 0
    written = json.loads(capsys.readouterr().out)
    assert all(path.endswith(".parquet") for paths in written.values() for path in paths)
    loaded = load_exported(tmp_path / "out", config_name="preprocessed")
    assert loaded["train"].features["pixel_values"].dtype == "float16"


def test_path_backed_nifti_is_embedded_so_the_export_survives_deleting_the_download(tmp_path):
    import shutil

    from fake_collections_nifti import write_fake_dlcsd24

    from datasets_scripts import Dlcsd24

    download = tmp_path / "download"
    write_fake_dlcsd24(download, patient_count=2, splits=("train",))
    builder = Dlcsd24(config_name="raw", data_dir=str(download), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    built = builder.as_dataset()
    expected = np.asarray(built["train"][0]["image"].dataobj).copy()
    export_to_parquet(built, tmp_path / "export", config_name="raw")
    shutil.rmtree(download)
    loaded = load_exported(tmp_path / "export", config_name="raw")
    np.testing.assert_array_equal(np.asarray(loaded["train"][0]["image"].dataobj), expected)
    assert loaded["train"].features["nodules"] == built["train"].features["nodules"]
