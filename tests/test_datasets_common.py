"""Tests of the shared dataset-builder machinery: splits, tables, messy values, skips, duplicates, geometry."""

import logging

import datasets
import numpy as np
import pytest

import datasets_scripts
from datasets_scripts.common import (
    CTVolumeBuilder,
    DatasetLayoutError,
    DatasetValueError,
    DuplicateDetector,
    LuCaFoundBuilderConfig,
    SkipCounter,
    is_missing,
    nifti_bytes_from_lps_volume,
    normalise_text,
    official_split_per_patient,
    parse_float,
    parse_int,
    parse_number_list,
    patient_level_split,
    preprocess_for_dataset,
    preprocessed_image_features,
    read_csv_table,
    structured_report_text,
    world_to_voxel,
    volume_writer_batch_size,
    write_bytes_atomically,
)
from modeling_lucafound.errors import LuCaFoundInputError


PATIENTS = [f"P{index:03d}" for index in range(50)]


def test_patient_level_split_gives_every_patient_exactly_one_split():
    assignment = patient_level_split(PATIENTS * 3, seed=0, validation_fraction=0.1, test_fraction=0.2)
    assert sorted(assignment) == PATIENTS
    assert set(assignment.values()) == {"train", "validation", "test"}


def test_patient_level_split_uses_the_fractions():
    assignment = patient_level_split(PATIENTS, seed=0, validation_fraction=0.1, test_fraction=0.2)
    counts = {split: list(assignment.values()).count(split) for split in ("train", "validation", "test")}
    assert counts == {"train": 35, "validation": 5, "test": 10}


def test_patient_level_split_is_reproducible_and_depends_on_the_seed():
    first = patient_level_split(PATIENTS, seed=7, validation_fraction=0.1, test_fraction=0.2)
    again = patient_level_split(list(reversed(PATIENTS)), seed=7, validation_fraction=0.1, test_fraction=0.2)
    other = patient_level_split(PATIENTS, seed=8, validation_fraction=0.1, test_fraction=0.2)
    assert first == again
    assert first != other


def test_patient_level_split_keeps_official_splits():
    official = {"P000": "test", "P001": "validation", "P002": "train"}
    assignment = patient_level_split(
        PATIENTS, seed=0, validation_fraction=0.5, test_fraction=0.4, official_splits=official
    )
    assert {patient: assignment[patient] for patient in official} == official


def test_patient_level_split_of_a_tiny_cohort_keeps_a_training_patient():
    assignment = patient_level_split(["A", "B"], seed=0, validation_fraction=0.4, test_fraction=0.5)
    assert "train" in assignment.values()


def test_official_split_per_patient_rejects_a_patient_on_two_sides():
    rows = [{"patient": "1", "split": "train"}, {"patient": "1", "split": "test"}]
    with pytest.raises(DatasetValueError, match="both"):
        official_split_per_patient(rows, "patient", lambda row: row["split"], "table.csv")


def test_builder_config_rejects_fractions_that_leave_no_training_data():
    with pytest.raises(LuCaFoundInputError, match="fraction"):
        LuCaFoundBuilderConfig(name="raw", validation_fraction=0.5, test_fraction=0.5)


def test_read_csv_table_strips_header_whitespace_and_full_width_letters(tmp_path):
    table = tmp_path / "clinical.csv"
    table.write_text("Case ID,Histology ,\uff2d-Stage\nR01-001, Adenocarcinoma ,M0\n", encoding="utf-8")
    rows = read_csv_table(table, ["Case ID", "Histology", "M-Stage"])
    assert rows == [{"Case ID": "R01-001", "Histology": "Adenocarcinoma", "M-Stage": "M0"}]


def test_read_csv_table_names_the_file_and_the_missing_columns(tmp_path):
    table = tmp_path / "annotations.csv"
    table.write_text("seriesuid,coordX\n1,2\n", encoding="utf-8")
    with pytest.raises(DatasetLayoutError, match=r"annotations\.csv.*\['coordY', 'coordZ'\]"):
        read_csv_table(table, ["seriesuid", "coordX", "coordY", "coordZ"])


def test_read_csv_table_reports_a_missing_file(tmp_path):
    with pytest.raises(DatasetLayoutError, match="absent.csv not found"):
        read_csv_table(tmp_path / "absent.csv", ["a"])


def test_missing_values_cover_blank_na_and_not_collected():
    assert all(
        is_missing(value) for value in ["", " ", "NA", "nan", "Not Collected", "not collected", None, float("nan")]
    )
    assert not any(is_missing(value) for value in ["0", "Unknown", "Wildtype"])


def test_parse_int_reads_2_and_2_point_0_alike():
    assert parse_int("2") == parse_int("2.0") == parse_int(" 2 ") == 2
    assert parse_int("NA") is None


def test_parse_int_rejects_fractions():
    with pytest.raises(DatasetValueError, match="whole number"):
        parse_int("2.5", column="clinical.T.Stage")


def test_parse_float_rejects_text():
    with pytest.raises(DatasetValueError, match="'abc' is not a number"):
        parse_float("abc")


def test_parse_number_list_reads_quoted_vectors():
    assert parse_number_list("0.859375, 0.859375, 5", 3) == [0.859375, 0.859375, 5.0]
    assert parse_number_list("[-166, 9, 56.2998657]", 3) == [-166.0, 9.0, 56.2998657]


def test_normalise_text_turns_full_width_into_ascii():
    assert normalise_text("\uff2d-Stage ") == "M-Stage"


def test_skip_counter_logs_and_counts_reasons(caplog):
    counter = SkipCounter("Fake")
    with caplog.at_level(logging.WARNING):
        counter.skip("a", "file missing")
        counter.skip("b", "file missing")
        counter.skip("c", "corrupt volume")
    assert counter.total == 3
    assert counter.summary() == {"file missing": 2, "corrupt volume": 1}
    assert "skipping a: file missing" in caplog.text


def test_duplicate_detector_finds_repeated_series_uid():
    detector = DuplicateDetector("Fake")
    assert detector.check("first", series_uid="1.2.3") is None
    assert detector.check("second", series_uid="1.2.3") == "first"


def test_duplicate_detector_finds_identical_voxels():
    detector = DuplicateDetector("Fake")
    volume = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    assert detector.check("first", series_uid="1", voxels=volume) is None
    assert detector.check("second", series_uid="2", voxels=volume.copy()) == "first"
    assert detector.check("third", series_uid="3", voxels=volume + 1) is None


def test_world_to_voxel_with_identity_direction():
    z, y, x = world_to_voxel((10.0, 20.0, 30.0), origin_xyz=(0.0, 0.0, 0.0), spacing_zyx=(5.0, 2.0, 1.0))
    assert (z, y, x) == pytest.approx((6.0, 10.0, 10.0))


def test_world_to_voxel_with_flipped_x_and_y():
    direction = ((-1, 0, 0), (0, -1, 0), (0, 0, 1))
    z, y, x = world_to_voxel(
        (-10.0, -20.0, 5.0), origin_xyz=(0.0, 0.0, 0.0), spacing_zyx=(1.0, 2.0, 2.0), direction=direction
    )
    assert (z, y, x) == pytest.approx((5.0, 10.0, 5.0))


def test_structured_report_text_leaves_out_missing_fields():
    text = structured_report_text(
        {"sex": "male", "age": 67.0, "histology": "NA", "overall stage": None, "T stage": "T2"}
    )
    assert text == "Sex: male. Age: 67. T stage: T2."


def test_preprocessed_image_features_store_float16_volumes():
    features = preprocessed_image_features((16, 32, 32))
    assert features["pixel_values"] == datasets.Array3D(shape=(16, 32, 32), dtype="float16")
    assert features["crop_bbox"] == datasets.Array2D(shape=(3, 2), dtype="int32")


def test_nifti_bytes_read_back_by_simpleitk_in_lps(tmp_path):
    import SimpleITK

    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = write_bytes_atomically(
        tmp_path / "volume.nii.gz", nifti_bytes_from_lps_volume(volume, (3.0, 2.0, 1.5), (-10.0, 20.0, 30.0))
    )
    image = SimpleITK.DICOMOrient(SimpleITK.ReadImage(str(path)), "LPS")
    np.testing.assert_array_equal(SimpleITK.GetArrayFromImage(image), volume)
    assert image.GetSpacing() == pytest.approx((1.5, 2.0, 3.0))
    assert image.GetOrigin() == pytest.approx((-10.0, 20.0, 30.0))


def test_write_bytes_atomically_leaves_no_temporary_file(tmp_path):
    write_bytes_atomically(tmp_path / "out.bin", b"abc")
    assert [path.name for path in tmp_path.iterdir()] == ["out.bin"]


def test_preprocess_for_dataset_returns_float16_crop_and_box():
    from datasets_scripts.phantoms import generate_chest_phantom

    phantom = generate_chest_phantom(3, shape=(32, 96, 96))
    config = LuCaFoundBuilderConfig(name="preprocessed", image_size=(8, 16, 16))
    columns = preprocess_for_dataset(phantom.hu, config, spacing=phantom.spacing)
    assert columns["pixel_values"].dtype == np.float16
    assert columns["pixel_values"].shape == (8, 16, 16)
    assert 0.0 <= float(columns["pixel_values"].min()) and float(columns["pixel_values"].max()) <= 1.0
    assert columns["crop_bbox"].shape == (3, 2)
    assert columns["spacing"] == pytest.approx(phantom.spacing)


def test_every_short_dataset_name_resolves_to_a_builder_class():
    for short_name, class_name in datasets_scripts.DATASET_BUILDERS.items():
        builder_class = datasets_scripts.get_builder_class(short_name)
        assert builder_class.__name__ == class_name
        assert issubclass(builder_class, datasets.GeneratorBasedBuilder)


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(datasets_scripts.UnknownDatasetError, match="unknown dataset 'lidc'.*synthetic"):
        datasets_scripts.get_builder_class("lidc")


def test_pixel_values_batch_reads_the_same_values_as_the_formatter():
    from datasets_scripts.common import pixel_values_batch

    volumes = np.random.default_rng(0).random((5, 2, 3, 4)).astype(np.float16)
    dataset = datasets.Dataset.from_dict(
        {"pixel_values": list(volumes)},
        features=datasets.Features({"pixel_values": datasets.Array3D((2, 3, 4), "float16")}),
    )
    batch = pixel_values_batch(dataset, slice(1, 4))
    assert batch.dtype == np.float16 and batch.shape == (3, 2, 3, 4)
    np.testing.assert_array_equal(batch, volumes[1:4])
    np.testing.assert_array_equal(pixel_values_batch(dataset, [4, 0]), volumes[[4, 0]])


@pytest.mark.parametrize("short_name", sorted(datasets_scripts.DATASET_BUILDERS))
def test_every_builder_writes_volumes_in_batches_below_arrows_2_gib_limit(short_name, tmp_path):
    builder_class = datasets_scripts.get_builder_class(short_name)
    assert issubclass(builder_class, CTVolumeBuilder)
    builder = builder_class(config_name="preprocessed", cache_dir=str(tmp_path), data_dir=str(tmp_path))
    # every fixed-size array of a row, e.g. UCSF-PDGM's four MRI sequences as channels of `pixel_values`
    row_bytes = sum(
        int(np.prod(feature.shape)) * np.dtype(feature.dtype).itemsize
        for feature in builder.info.features.values()
        if hasattr(feature, "shape")
    )
    assert row_bytes >= 2 * int(np.prod(builder.config.image_size))
    assert builder._writer_batch_size * row_bytes <= 2**30
    raw_builder = builder_class(config_name="raw", cache_dir=str(tmp_path), data_dir=str(tmp_path))
    assert raw_builder._writer_batch_size * 200 * 2**20 < 2**31  # four raw CTs of 200 MiB


def test_an_explicit_writer_batch_size_wins(tmp_path):
    builder = datasets_scripts.get_builder_class("synthetic")(
        config_name="preprocessed", cache_dir=str(tmp_path), writer_batch_size=7
    )
    assert builder._writer_batch_size == 7


def test_writer_batch_size_shrinks_as_the_preprocessed_volume_grows():
    small = LuCaFoundBuilderConfig(name="preprocessed", image_size=(16, 64, 64))
    default = LuCaFoundBuilderConfig(name="preprocessed")
    assert volume_writer_batch_size(small, preprocessed_image_features(small.image_size)) == 1000
    default_rows = volume_writer_batch_size(default, preprocessed_image_features(default.image_size))
    assert default_rows * 2 * 48 * 256 * 256 <= 2**30
