"""`lucafound embed` and `modeling_lucafound.embedding`: one Parquet row per scan, resumable, failures per row."""

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ct_phantoms import write_dicom_series
from modeling_lucafound import cli
from modeling_lucafound.embedding import (
    DuplicateScanIdError,
    EmbeddingInputError,
    FeatureTableMismatchError,
    collect_scan_inputs,
    embed_ct_scans,
    parts_folder_for,
    read_feature_table,
)
from saved_folders import chest_scan, save_tiny_lucafound_folder, write_chest_file, write_image_file


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_tiny_lucafound_folder(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def other_model_folder(tmp_path_factory):
    return save_tiny_lucafound_folder(tmp_path_factory.mktemp("model") / "other", seed=1)


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory):
    """Three chest CTs in three formats, a DICOM series with identifying header fields, and one corrupt file."""
    folder = tmp_path_factory.mktemp("scans")
    write_chest_file(folder / "a.nii.gz", seed=0)
    write_chest_file(folder / "b.nrrd", seed=1)
    write_chest_file(folder / "nested" / "c.mhd", seed=2)
    scan = chest_scan(3)
    write_dicom_series(folder / "dicom" / "series1", scan.hu, scan.spacing, patient_name="DOE^JANE",
                       patient_id="MRN-998877")
    (folder / "corrupt.nii.gz").write_bytes(b"this is not a NIfTI file")
    return folder


def embed(inputs, model, output, **options):
    options.setdefault("num_workers", 0)
    options.setdefault("progress", False)
    return embed_ct_scans(inputs, model, output, **options)


def test_folder_input_finds_every_ct_file_and_dicom_series(scan_folder):
    ids = [scan.id.removeprefix(scan_folder.as_posix() + "/") for scan in collect_scan_inputs([scan_folder])]
    assert sorted(ids) == ["a.nii.gz", "b.nrrd", "corrupt.nii.gz", "dicom/series1", "nested/c.mhd"]


def test_embed_writes_one_row_per_scan_with_feature_crop_box_and_status(scan_folder, model_folder, tmp_path):
    output = tmp_path / "features.parquet"
    summary = embed([scan_folder], model_folder, output)
    table, metadata = read_feature_table(output)
    assert (summary.total, summary.embedded, summary.failed) == (5, 4, 1)
    assert len(table) == 5 and table["id"].is_unique
    ok = table[table["status"] == "ok"]
    assert len(ok) == 4
    assert np.stack(ok["feature"].to_list()).shape == (4, metadata["feature_size"])
    for box, shape in zip(ok["crop_bbox"], ok["shape"]):
        box = np.stack(box)
        assert box.shape == (3, 2) and (box[:, 0] < box[:, 1]).all() and (box[:, 1] <= shape).all()
    assert ok["error"].isna().all()
    assert not parts_folder_for(output).exists()


def test_a_corrupt_file_becomes_a_failed_row_with_the_reason(scan_folder, model_folder, tmp_path):
    output = tmp_path / "features.parquet"
    embed([scan_folder / "corrupt.nii.gz", scan_folder / "a.nii.gz"], model_folder, output)
    table, _ = read_feature_table(output)
    failed = table.set_index("id").loc[(scan_folder / "corrupt.nii.gz").as_posix()]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("UnreadableCTError") and "corrupt.nii.gz" in failed["error"]
    assert failed["feature"] is None


def test_features_equal_the_encoder_run_on_the_image_processor_output(scan_folder, model_folder, tmp_path):
    from modeling_lucafound.image_processing_lucafound import LuCaFoundImageProcessor
    from modeling_lucafound.modeling_lucafound import LuCaFoundModel

    output = tmp_path / "features.parquet"
    embed([scan_folder / "b.nrrd"], model_folder, output)
    table, _ = read_feature_table(output)
    pixel_values = LuCaFoundImageProcessor.from_pretrained(model_folder)(str(scan_folder / "b.nrrd"), return_tensors="pt")
    model = LuCaFoundModel.from_pretrained(model_folder).eval()
    with torch.no_grad():
        expected = model.vision_model(pixel_values=pixel_values["pixel_values"]).pooler_output[0].numpy()
    np.testing.assert_allclose(np.asarray(table["feature"][0]), expected, rtol=1e-4, atol=1e-5)


def test_feature_table_carries_no_patient_identifying_dicom_fields(scan_folder, model_folder, tmp_path):
    output = tmp_path / "features.parquet"
    embed([scan_folder / "dicom" / "series1"], model_folder, output)
    table, metadata = read_feature_table(output)
    assert list(table["status"]) == ["ok"]
    raw = output.read_bytes()
    for value in (b"DOE^JANE", b"DOE", b"MRN-998877", b"19500101", b"20200102", b"General Hospital", b"ACC123",
                  b"HOUSE"):
        assert value not in raw
    assert set(table.columns) == {"id", "status", "error", "feature", "crop_bbox", "spacing", "shape"}


def test_rerunning_skips_scans_already_embedded_and_embeds_only_new_ones(scan_folder, model_folder, tmp_path):
    output = tmp_path / "features.parquet"
    embed([scan_folder / "a.nii.gz"], model_folder, output)
    first = read_feature_table(output)[0].set_index("id")
    summary = embed([scan_folder / "a.nii.gz", scan_folder / "b.nrrd"], model_folder, output)
    assert (summary.skipped, summary.embedded) == (1, 1)
    second = read_feature_table(output)[0].set_index("id")
    assert len(second) == 2
    key = (scan_folder / "a.nii.gz").as_posix()
    np.testing.assert_array_equal(np.asarray(second.loc[key, "feature"]), np.asarray(first.loc[key, "feature"]))


def test_an_interrupted_run_keeps_finished_batches_and_the_rerun_completes(scan_folder, model_folder, tmp_path,
                                                                         monkeypatch):
    import modeling_lucafound.embedding as embedding

    output = tmp_path / "features.parquet"
    inputs = [scan_folder / "a.nii.gz", scan_folder / "b.nrrd", scan_folder / "nested" / "c.mhd"]
    real_encode = embedding._encode
    calls = []

    def encode_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash during the second batch")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(embedding, "_encode", encode_then_crash)
    with pytest.raises(KeyboardInterrupt):
        embed(inputs, model_folder, output, batch_size=1, rows_per_part=1)
    assert not output.exists()  # nothing that looks complete
    assert len(list(parts_folder_for(output).glob("part-*.parquet"))) == 1
    monkeypatch.setattr(embedding, "_encode", real_encode)
    summary = embed(inputs, model_folder, output, batch_size=1)
    assert (summary.skipped, summary.embedded) == (1, 2)
    assert sorted(read_feature_table(output)[0]["status"]) == ["ok", "ok", "ok"]


def test_failed_scans_are_retried_on_the_next_run(scan_folder, model_folder, tmp_path):
    output = tmp_path / "features.parquet"
    broken = tmp_path / "late.nrrd"
    broken.write_bytes(b"not yet copied")
    embed([broken], model_folder, output)
    assert list(read_feature_table(output)[0]["status"]) == ["failed"]
    write_chest_file(broken, seed=4)
    summary = embed([broken], model_folder, output)
    assert summary.embedded == 1
    assert list(read_feature_table(output)[0]["status"]) == ["ok"]


def test_appending_features_of_another_model_is_refused(scan_folder, model_folder, other_model_folder, tmp_path):
    output = tmp_path / "features.parquet"
    embed([scan_folder / "a.nii.gz"], model_folder, output)
    with pytest.raises(FeatureTableMismatchError, match="--overwrite"):
        embed([scan_folder / "b.nrrd"], other_model_folder, output)
    summary = embed([scan_folder / "b.nrrd"], other_model_folder, output, overwrite=True)
    assert summary.embedded == 1 and len(read_feature_table(output)[0]) == 1


def test_processes_embed_disjoint_shares_and_the_main_process_merges_them(scan_folder, model_folder, tmp_path):
    output = tmp_path / "features.parquet"
    inputs = [scan_folder / "a.nii.gz", scan_folder / "b.nrrd", scan_folder / "nested" / "c.mhd"]
    second = embed(inputs, model_folder, output, process_index=1, num_processes=2)
    assert not output.exists()  # only the main process writes the merged table
    first = embed(inputs, model_folder, output, process_index=0, num_processes=2)
    assert first.skipped == second.embedded and first.embedded + second.embedded == 3
    table = read_feature_table(output)[0]
    assert sorted(table["id"]) == sorted(path.as_posix() for path in inputs)


def test_csv_of_paths_gives_pseudonymous_ids_and_resolves_relative_paths(scan_folder, model_folder, tmp_path):
    listing = tmp_path / "cohort.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([" path", "id "])
        writer.writerow([str(scan_folder / "a.nii.gz"), "case-001"])
        write_chest_file(tmp_path / "local" / "d.nii.gz", seed=5)
        writer.writerow(["local/d.nii.gz", "case-002"])
    scans = collect_scan_inputs([listing])
    assert [scan.id for scan in scans] == ["case-001", "case-002"]
    assert scans[1].source == str(tmp_path / "local" / "d.nii.gz")


def test_csv_without_a_path_column_names_what_is_missing(tmp_path):
    listing = tmp_path / "cohort.csv"
    listing.write_text("file,id\na.nii.gz,1\n")
    with pytest.raises(EmbeddingInputError, match="no 'path' column"):
        collect_scan_inputs([listing])


def test_missing_input_and_colliding_ids_raise_clear_errors(tmp_path):
    with pytest.raises(EmbeddingInputError, match="does not exist"):
        collect_scan_inputs([tmp_path / "nowhere"])
    listing = tmp_path / "cohort.csv"
    write_image_file(tmp_path / "x.nii.gz", np.full((12, 8, 8), -1000), (1, 1, 1))
    write_image_file(tmp_path / "y.nii.gz", np.full((12, 8, 8), -1000), (1, 1, 1))
    listing.write_text("path,id\nx.nii.gz,same\ny.nii.gz,same\n")
    with pytest.raises(DuplicateScanIdError, match="same"):
        collect_scan_inputs([listing])


def test_cli_embeds_with_dataloader_workers_and_reports_failures(scan_folder, model_folder, tmp_path, capsys):
    output = tmp_path / "cli.parquet"
    argv = ["embed", str(scan_folder), "--model", str(model_folder), "--output", str(output), "--num-workers", "2",
            "--batch-size", "2", "--no-progress"]
    assert cli.main(argv) == 0
    assert "4 embedded, 1 failed" in capsys.readouterr().err
    assert cli.main(argv + ["--strict"]) == 1  # the corrupt file is retried, fails again
    metadata = pq.read_schema(output).metadata
    assert b"feature_size" in metadata[b"lucafound"]


def test_cli_reports_a_folder_without_a_model_as_an_input_error(scan_folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli.main(["embed", str(scan_folder / "a.nii.gz"), "--model", str(tmp_path / "empty"), "--output",
                     str(tmp_path / "f.parquet"), "--no-progress"])
    assert code == 2
    assert "image processor" in capsys.readouterr().err


def test_two_processes_under_torchrun_share_the_scans_and_write_one_table(scan_folder, model_folder, tmp_path):
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from modeling_lucafound.embedding import shard_of

    output = tmp_path / "distributed.parquet"
    listing = tmp_path / "cohort.csv"
    paths = [scan_folder / "a.nii.gz", scan_folder / "b.nrrd", scan_folder / "nested" / "c.mhd", scan_folder / "dicom" / "series1"]
    ids = ["case-001", "case-002", "case-003", "case-004"]
    listing.write_text("path,id\n" + "".join(f"{path},{scan_id}\n" for path, scan_id in zip(paths, ids)))
    expected_shares = sorted(sum(shard_of(scan_id, 2) == rank for scan_id in ids) for rank in (0, 1))
    assert expected_shares == [1, 3]
    repository = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repository), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "modeling_lucafound.cli",
               "embed", str(listing), "--model", str(model_folder), "--output", str(output), "--num-workers", "0",
               "--no-progress"]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = re.compile(re.escape(str(output)) + r": \d+ scans, \d+ already done, (\d+) embedded")
    shares = sorted(int(count) for count in report.findall(finished.stderr))
    assert shares == expected_shares
    table, _ = read_feature_table(output)
    assert sorted(table["id"]) == ids and (table["status"] == "ok").all()


def test_the_same_model_under_another_path_resumes_the_same_table(scan_folder, model_folder, tmp_path):
    import shutil

    output = tmp_path / "features.parquet"
    embed([scan_folder / "a.nii.gz"], model_folder, output)
    copy = shutil.copytree(model_folder, tmp_path / "copy-of-the-model")
    summary = embed([scan_folder / "a.nii.gz"], copy, output)
    assert (summary.skipped, summary.embedded) == (1, 0)
