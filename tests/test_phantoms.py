"""Tests of the procedural chest CT phantoms: anatomy, findings, reports, labels, reproducibility."""

import collections

import numpy as np
import pytest

from datasets_scripts.phantoms import (
    EGFR_CLASSES,
    HISTOLOGY_CLASSES,
    LOBE_NAMES,
    M_STAGE_CLASSES,
    N_STAGE_CLASSES,
    OVERALL_STAGE_CLASSES,
    T_STAGE_CLASSES,
    default_spacing,
    generate_chest_phantom,
)


SMALL = (32, 96, 96)


@pytest.fixture(scope="module")
def full_size_phantom():
    return generate_chest_phantom(11)


@pytest.fixture(scope="module")
def small_cohort():
    """Many tiny phantoms: enough to check that labels follow the findings."""
    return [generate_chest_phantom(seed, shape=(16, 40, 40), noise_std=0) for seed in range(160)]


def test_default_phantom_has_the_contract_shape_spacing_and_dtype(full_size_phantom):
    assert full_size_phantom.hu.shape == (128, 256, 256)
    assert full_size_phantom.hu.dtype == np.int16
    assert full_size_phantom.spacing == (2.5, 1.4, 1.4)
    assert full_size_phantom.lesion_mask.shape == full_size_phantom.hu.shape
    assert full_size_phantom.lesion_mask.dtype == bool


def test_same_seed_gives_identical_phantoms():
    first, second = generate_chest_phantom(5, shape=SMALL), generate_chest_phantom(5, shape=SMALL)
    np.testing.assert_array_equal(first.hu, second.hu)
    assert first.report == second.report and first.labels == second.labels


def test_different_seeds_give_different_phantoms():
    assert not np.array_equal(generate_chest_phantom(1, shape=SMALL).hu, generate_chest_phantom(2, shape=SMALL).hu)


def test_lungs_are_near_minus_850_hu(full_size_phantom):
    lung_hu = full_size_phantom.hu[full_size_phantom.lung_mask & ~full_size_phantom.lesion_mask]
    assert -900 < np.median(lung_hu) < -800
    left_half = full_size_phantom.lung_mask[:, :, 128:].sum()
    right_half = full_size_phantom.lung_mask[:, :, :128].sum()
    assert 0.6 < left_half / right_half < 1.6  # two lungs of similar size


def test_body_has_air_fat_muscle_and_bone(full_size_phantom):
    hu = full_size_phantom.hu
    assert np.median(hu[:, :5, :]) < -950  # air in front of the patient
    fraction = lambda low, high: np.mean((hu > low) & (hu < high))  # noqa: E731
    assert fraction(-140, -60) > 0.02  # fat
    assert fraction(20, 80) > 0.02  # muscle and organs
    assert fraction(500, 1500) > 0.001  # cortical bone of ribs and spine


def test_spine_lies_behind_the_lungs(full_size_phantom):
    bone_rows = np.nonzero((full_size_phantom.hu[60] > 500).any(axis=1))[0]
    lung_rows = np.nonzero(full_size_phantom.lung_mask[60].any(axis=1))[0]
    assert bone_rows.max() > lung_rows.mean()  # y grows towards the back in LPS


def test_trachea_is_air_in_the_midline_above_the_lungs(full_size_phantom):
    top_slice = full_size_phantom.hu[120]
    assert (top_slice[100:160, 120:136] < -900).any()


def test_primary_tumour_is_painted_where_the_findings_say(full_size_phantom):
    primary = full_size_phantom.findings[0]
    assert primary["role"] == "primary"
    z, y, x = (int(round(value)) for value in primary["center_voxel"])
    assert full_size_phantom.lesion_mask.any()
    (z0, z1), (y0, y1), (x0, x1) = primary["bbox"]
    assert full_size_phantom.lesion_mask[z0:z1, y0:y1, x0:x1].any()
    assert (x < 128) == (primary["side"] == "right")  # LPS: the patient's right is at small x


def test_report_describes_the_primary_tumour(full_size_phantom):
    primary = full_size_phantom.findings[0]
    report = full_size_phantom.report
    assert f"{primary['diameter_mm']} mm {primary['margin']} {primary['density']} {primary['kind']}" in report
    assert LOBE_NAMES[primary["lobe"]] in report
    assert "FINDINGS:" in report and "IMPRESSION:" in report


def test_report_never_states_the_labels(small_cohort):
    for phantom in small_cohort[:30]:
        assert phantom.labels["histology"] not in phantom.report.lower()
        assert "egfr" not in phantom.report.lower()


def test_labels_use_the_published_vocabularies(small_cohort):
    for phantom in small_cohort:
        labels = phantom.labels
        assert labels["histology"] in HISTOLOGY_CLASSES
        assert labels["egfr"] in EGFR_CLASSES
        assert labels["t_stage"] in T_STAGE_CLASSES and labels["n_stage"] in N_STAGE_CLASSES
        assert labels["m_stage"] in M_STAGE_CLASSES and labels["stage"] in OVERALL_STAGE_CLASSES
        assert labels["survival_days"] >= 1 and labels["event"] in (0, 1)


@pytest.mark.parametrize("location", ["juxtapleural", "mediastinal", "central", "peripheral"])
def test_primary_location_can_be_fixed(location):
    phantom = generate_chest_phantom(
        3, shape=(48, 128, 128), primary_lesion={"location": location, "diameter_mm": 20, "lobe": "RLL"}
    )
    assert phantom.findings[0]["location"] == location
    assert phantom.findings[0]["lobe"] == "RLL"


def test_juxtapleural_tumour_touches_the_chest_wall():
    phantom = generate_chest_phantom(
        4, shape=(48, 128, 128), primary_lesion={"location": "juxtapleural", "diameter_mm": 24}
    )
    from scipy import ndimage

    lesion = phantom.lesion_mask
    neighbours = ndimage.binary_dilation(lesion, iterations=2) & ~lesion
    soft_tissue_around = (phantom.hu[neighbours] > -300) & ~phantom.lung_mask[neighbours]
    assert soft_tissue_around.mean() > 0.05


def test_ground_glass_tumour_stays_below_soft_tissue_density():
    phantom = generate_chest_phantom(
        6,
        shape=(48, 128, 128),
        noise_std=0,
        primary_lesion={"density": "ground-glass", "margin": "smooth", "diameter_mm": 20},
    )
    lesion_hu = phantom.hu[phantom.lesion_mask]
    assert -700 < np.median(lesion_hu) < -300


def test_small_grid_default_spacing_covers_an_adult_chest():
    assert default_spacing((128, 256, 256)) == pytest.approx((2.5, 1.4, 1.4))
    phantom = generate_chest_phantom(0, shape=(24, 64, 64))
    assert phantom.hu.shape == (24, 64, 64)
    assert phantom.spacing == pytest.approx((320 / 24, 5.6, 5.6))


def test_explicit_spacing_is_respected():
    phantom = generate_chest_phantom(0, shape=(24, 64, 64), spacing=(5.0, 3.0, 3.0))
    assert phantom.spacing == (5.0, 3.0, 3.0)


def test_lung_segmentation_finds_the_phantom_lungs():
    from modeling_lucafound.lung_segmentation import segment_lungs

    phantom = generate_chest_phantom(8, shape=(32, 96, 96))
    found = segment_lungs(phantom.hu, phantom.spacing)
    dice = 2 * (found & phantom.lung_mask).sum() / (found.sum() + phantom.lung_mask.sum())
    assert dice > 0.9


def test_histology_depends_on_location_and_density(small_cohort):
    outer_ground_glass = [
        p
        for p in small_cohort
        if p.findings[0]["density"] != "solid" and p.findings[0]["location"] in ("peripheral", "juxtapleural")
    ]
    central_solid = [
        p
        for p in small_cohort
        if p.findings[0]["density"] == "solid" and p.findings[0]["location"] in ("central", "mediastinal")
    ]
    adeno_share = lambda group: np.mean([p.labels["histology"] == "adenocarcinoma" for p in group])  # noqa: E731
    assert len(outer_ground_glass) > 10 and len(central_solid) > 10
    assert adeno_share(outer_ground_glass) > adeno_share(central_solid) + 0.3


def test_egfr_mutations_concentrate_in_adenocarcinoma(small_cohort):
    by_histology = collections.defaultdict(list)
    for phantom in small_cohort:
        by_histology[phantom.labels["histology"] == "adenocarcinoma"].append(phantom.labels["egfr"] == "mutant")
    assert np.mean(by_histology[True]) > np.mean(by_histology[False]) + 0.2


def test_stage_follows_visible_spread(small_cohort):
    for phantom in small_cohort:
        kinds = {finding["kind"] for finding in phantom.findings}
        if phantom.labels["n_stage"] != "N0":
            assert "lymph node" in kinds
        if phantom.labels["m_stage"] != "M0":
            assert phantom.labels["stage"] == "IV"
            assert kinds & {"pleural effusion", "bone lesion"} or any(
                finding.get("role") == "further nodule" and finding["side"] != phantom.findings[0]["side"]
                for finding in phantom.findings
            )


def test_survival_is_shorter_at_higher_stage(small_cohort):
    early = [p.labels["survival_days"] for p in small_cohort if p.labels["stage"] == "I" and p.labels["event"]]
    late = [p.labels["survival_days"] for p in small_cohort if p.labels["stage"] in ("III", "IV") and p.labels["event"]]
    assert np.median(early) > np.median(late)


def test_unknown_primary_lesion_field_is_rejected():
    with pytest.raises(ValueError, match="unknown primary_lesion field 'colour'"):
        generate_chest_phantom(0, shape=SMALL, primary_lesion={"colour": "red"})
