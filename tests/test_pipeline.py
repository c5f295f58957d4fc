"""transformers.pipeline("image-feature-extraction", model=FOLDER, trust_remote_code=True) takes a CT path."""

import numpy as np
import pytest
import torch

from modeling_lucafound.pipeline_lucafound import add_feature_extraction_pipeline
from saved_folders import chest_scan, save_tiny_lucafound_folder, write_chest_file


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    folder = save_tiny_lucafound_folder(tmp_path_factory.mktemp("pipeline") / "tiny")
    add_feature_extraction_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    return write_chest_file(tmp_path_factory.mktemp("ct") / "chest.nrrd", seed=7)


def test_saved_folder_registers_the_custom_pipeline_and_copies_its_code(pipeline_folder):
    import json

    config = json.loads((pipeline_folder / "config.json").read_text())
    assert config["custom_pipelines"]["image-feature-extraction"]["impl"] == (
        "pipeline_lucafound.LuCaFoundFeatureExtractionPipeline"
    )
    assert (pipeline_folder / "pipeline_lucafound.py").is_file()


def test_pipeline_returns_the_ct_feature_for_a_path(pipeline_folder, ct_path):
    from transformers import pipeline

    from modeling_lucafound.image_processing_lucafound import LuCaFoundImageProcessor
    from modeling_lucafound.modeling_lucafound import LuCaFoundModel

    extractor = pipeline("image-feature-extraction", model=str(pipeline_folder), trust_remote_code=True)
    assert type(extractor).__name__ == "LuCaFoundFeatureExtractionPipeline"
    feature = extractor(str(ct_path))
    model = LuCaFoundModel.from_pretrained(pipeline_folder).eval()
    pixel_values = LuCaFoundImageProcessor.from_pretrained(pipeline_folder)(str(ct_path), return_tensors="pt")
    with torch.no_grad():
        expected = model.vision_model(pixel_values=pixel_values["pixel_values"]).pooler_output[0]
    assert isinstance(feature, list) and len(feature) == model.config.vision_config.hidden_size
    np.testing.assert_allclose(feature, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_pipeline_takes_arrays_with_spacing_and_returns_tensors_and_crop_boxes_on_request(pipeline_folder):
    from transformers import pipeline

    extractor = pipeline("image-feature-extraction", model=str(pipeline_folder), trust_remote_code=True)
    scan = chest_scan(8)
    result = extractor(scan.hu, spacing=scan.spacing, return_tensors=True, return_crop_info=True)
    assert result["feature"].shape == (1, 32)
    assert np.asarray(result["crop_info"]["bbox"]).shape == (3, 2)


def test_registering_needs_a_saved_image_processor(tmp_path):
    from modeling_lucafound.modeling_lucafound import LuCaFoundModel
    from tiny_models import tiny_config

    LuCaFoundModel(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="image processor"):
        add_feature_extraction_pipeline(tmp_path)


def test_pipeline_works_where_the_lucafound_package_cannot_be_imported(pipeline_folder, ct_path):
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        class RefuseLuCaFound:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("modeling_lucafound", "datasets_scripts", "train"):
                    raise ImportError("package not installed on this machine: " + name)
        sys.meta_path.insert(0, RefuseLuCaFound())
        from transformers import pipeline
        extractor = pipeline("image-feature-extraction", model={str(pipeline_folder)!r}, trust_remote_code=True)
        print(len(extractor({str(ct_path)!r})))
    """)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                              env=environment, cwd=str(ct_path.parent))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.strip().splitlines()[-1] == "32"
