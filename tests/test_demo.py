"""`lucafound demo`: every step of the system on a reduced synthetic cohort (the full demo is the README's main job)."""

import json

import pandas as pd

from modeling_lucafound import cli


def test_demo_runs_every_step_and_writes_its_reports(tmp_path, capsys):
    output_dir = tmp_path / "demo"
    code = cli.main(["demo", "--output-dir", str(output_dir), "--seed", "1", "--num-samples", "12",
                     "--pretrain-steps", "2", "--finetune-steps", "2", "--batch-size", "2"])
    assert code == 0
    summary = json.loads((output_dir / "demo_summary.json").read_text())
    assert [step["step"] for step in summary["steps"]] == [
        "generate + preprocess cohort",
        "pretrain (CLIP, tiny)",
        "LoRA fine-tune + evaluate (histology)",
        "save Hub-ready folder",
        "reload with AutoModel (trust_remote_code, offline)",
        "embed a CT volume",
        "zero-shot query",
    ]
    assert "from the folder code" in summary["steps"][4]["result"]
    assert set(summary["finetune_metrics"]) >= {"accuracy"}
    assert 0.0 <= sum(summary["zero_shot"].values()) <= 3.0 and len(summary["zero_shot"]) == 3
    features = pd.read_parquet(output_dir / "features.parquet")
    assert list(features["status"]) == ["ok"] and len(features["feature"][0]) == 128
    hub_dir = output_dir / "lucafound-tiny-demo"
    assert (hub_dir / "README.md").read_text().startswith("---\n")
    assert "| **total** |" in (output_dir / "demo_summary.md").read_text()
    assert "| zero-shot query |" in capsys.readouterr().out
