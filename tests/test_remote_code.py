"""Saved folders load with trust_remote_code in a fresh, offline process that cannot import this package."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_lucafound.modeling_lucafound import (
    LuCaFoundForCTClassification,
    LuCaFoundForSurvival,
    LuCaFoundModel,
    LuCaFoundVisionModel,
)
from tiny_models import tiny_batch, tiny_config

LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys
    import torch
    from safetensors.torch import load_file, save_file

    class BlockProjectPackages(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_lucafound", "datasets_scripts", "train"):
                raise ModuleNotFoundError(f"{name} is blocked: this process must not see the LuCaFound package")
            return None

    sys.meta_path.insert(0, BlockProjectPackages())
    try:
        import modeling_lucafound
        raise SystemExit("the LuCaFound package was importable")
    except ModuleNotFoundError:
        pass

    from transformers import AutoModel, AutoModelForImageClassification

    root, = sys.argv[1:]
    inputs = load_file(f"{root}/inputs.safetensors")
    results, report = {}, {}
    loaders = {"dual": AutoModel, "vision": AutoModel, "classifier": AutoModelForImageClassification, "survival": AutoModel}
    for name, auto_class in loaders.items():
        model = auto_class.from_pretrained(f"{root}/{name}", trust_remote_code=True).eval()
        module = sys.modules[type(model).__module__]
        report[name] = {
            "class": type(model).__name__,
            "module": type(model).__module__,
            "buffers_intact": all(
                torch.equal(m.relative_position_index, module.relative_position_index(m.window_size))
                for m in model.modules() if hasattr(m, "relative_position_index")
            ),
        }
        with torch.no_grad():
            if name == "dual":
                output = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                               attention_mask=inputs["attention_mask"])
                results["dual.logits"] = output.logits_per_image
                results["dual.image_embeds"] = output.image_embeds
            elif name == "vision":
                results["vision.pooled"] = model(pixel_values=inputs["pixel_values"]).pooler_output
            elif name == "classifier":
                results["classifier.logits"] = model(pixel_values=inputs["pixel_values"]).logits
            else:
                results["survival.risk"] = model(pixel_values=inputs["pixel_values"]).risk
    save_file({k: v.contiguous() for k, v in results.items()}, f"{root}/loaded_outputs.safetensors")
    print(json.dumps(report))
    """
)


def expected_outputs(models, batch):
    with torch.no_grad():
        dual = models["dual"](**batch)
        return {
            "dual.logits": dual.logits_per_image,
            "dual.image_embeds": dual.image_embeds,
            "vision.pooled": models["vision"](pixel_values=batch["pixel_values"]).pooler_output,
            "classifier.logits": models["classifier"](pixel_values=batch["pixel_values"]).logits,
            "survival.risk": models["survival"](pixel_values=batch["pixel_values"]).risk,
        }


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote_code")
    torch.manual_seed(0)
    models = {
        "dual": LuCaFoundModel(tiny_config()),
        "vision": LuCaFoundVisionModel(tiny_config().vision_config),
        "classifier": LuCaFoundForCTClassification(tiny_config(num_labels=3, id2label={0: "adenocarcinoma", 1: "squamous cell carcinoma", 2: "other"})),
        "survival": LuCaFoundForSurvival(tiny_config()),
    }
    for name, model in models.items():
        model.eval().save_pretrained(root / name)
    batch = tiny_batch()
    save_file(batch, str(root / "inputs.safetensors"))
    return root, expected_outputs(models, batch)


def test_saved_folder_has_config_weights_code_and_complete_auto_map(saved_folders):
    root, _ = saved_folders
    folder = root / "dual"
    assert {"config.json", "model.safetensors", "configuration_lucafound.py", "modeling_lucafound.py"} <= set(os.listdir(folder))
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_lucafound.LuCaFoundConfig"
    assert auto_map["AutoModel"] == "modeling_lucafound.LuCaFoundModel"
    vision_map = json.loads((root / "vision" / "config.json").read_text())["auto_map"]
    assert vision_map == {
        "AutoConfig": "configuration_lucafound.LuCaFoundVisionConfig",
        "AutoModel": "modeling_lucafound.LuCaFoundVisionModel",
    }
    classifier_map = json.loads((root / "classifier" / "config.json").read_text())["auto_map"]
    assert classifier_map["AutoModelForImageClassification"] == "modeling_lucafound.LuCaFoundForCTClassification"


def test_copied_code_imports_only_torch_transformers_numpy_and_the_standard_library(saved_folders):
    import ast

    root, _ = saved_folders
    allowed = {"torch", "transformers", "numpy"} | set(sys.stdlib_module_names)
    for path in (root / "dual").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: lazy imports inside functions are allowed
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name} at module level"


def test_fresh_offline_process_without_the_package_loads_every_folder_bit_identically(saved_folders, tmp_path):
    root, expected = saved_folders
    script = tmp_path / "load_without_package.py"
    script.write_text(LOADER)
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH",)}
    environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    completed = subprocess.run(
        [sys.executable, str(script), str(root)], cwd=tmp_path, env=environment, capture_output=True, text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["dual"]["class"] == "LuCaFoundModel"
    assert report["vision"]["class"] == "LuCaFoundVisionModel"
    assert report["classifier"]["class"] == "LuCaFoundForCTClassification"
    assert report["survival"]["class"] == "LuCaFoundForSurvival"
    assert all(entry["module"].startswith("transformers_modules.") for entry in report.values())
    assert all(entry["buffers_intact"] for entry in report.values())
    loaded = load_file(str(root / "loaded_outputs.safetensors"))
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name
