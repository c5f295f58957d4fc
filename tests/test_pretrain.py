"""train/pretrain.py, train/data.py and train/retrieval.py: options, outputs, exact resume, augmentation, metrics."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from train import pretrain
from train.data import (
    CTAugmentation,
    EpochShuffleSampler,
    add_example_index,
    collate_ct_batch,
    load_dataset_splits,
    set_ct_transforms,
    shard_for_process,
)
from train.retrieval import retrieval_metrics

PHANTOM_OPTION = "phantom_shape=[32,64,64]"


def _common_arguments(cache_dir, output_dir, max_steps):
    return [
        "--dataset", "synthetic", "--num-samples", "12", "--dataset-option", PHANTOM_OPTION,
        "--cache-dir", str(cache_dir), "--model-size", "tiny", "--batch-size", "2", "--max-steps", str(max_steps),
        "--checkpoint-every", "2", "--eval-every", "2", "--warmup-steps", "1", "--lr", "1e-3",
        "--output-dir", str(output_dir), "--report-to", "none", "--no-progress-bar", "--seed", "3",
    ]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets_cache")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, cache_dir):
    """Four steps straight through, checkpointing every two."""
    output_dir = tmp_path_factory.mktemp("straight")
    result = pretrain.main(_common_arguments(cache_dir, output_dir, 4))
    return output_dir, result


def _metrics_lines(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def _final_parameters(output_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(output_dir) / "final" / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------------- options


def test_help_names_every_option_the_issue_requires():
    text = pretrain.build_parser().format_help()
    for option in ("--dataset", "--data-dir", "--num-samples", "--model-size", "--init-vision", "--init-text",
                   "--max-steps", "--batch-size", "--lr", "--output-dir", "--resume", "--config"):
        assert option in text


def test_yaml_config_sets_options_and_the_command_line_overrides_it(tmp_path):
    config = tmp_path / "options.yaml"
    config.write_text("max-steps: 7\nbatch_size: 3\ndataset-option:\n  phantom_shape: [32, 64, 64]\n")
    options = pretrain.parse_options(["--config", str(config), "--batch-size", "5"])
    assert options.max_steps == 7
    assert options.batch_size == 5
    assert options.dataset_option == [("phantom_shape", [32, 64, 64])]


def test_unknown_yaml_option_is_rejected_with_its_name(tmp_path):
    config = tmp_path / "options.yaml"
    config.write_text("max_stepz: 7\n")
    with pytest.raises(pretrain.PretrainingOptionError, match="max_stepz"):
        pretrain.parse_options(["--config", str(config)])


def test_shipped_tiny_options_file_parses():
    options = pretrain.parse_options(["--config", "pretrain_tiny.yaml"])
    assert options.model_size == "tiny"
    assert options.dataset == "synthetic"


def test_text_pooling_option_sets_how_a_new_text_tower_pools_the_report():
    from modeling_lucafound.report_tokenizer import train_report_tokenizer

    reports = ["Spiculated mass in the right upper lobe.", "No pleural effusion.", "Ground-glass nodule, left lower lobe."]
    tokenizer = train_report_tokenizer(reports, vocab_size=200)
    for pooling in ("mean", "cls"):
        options = pretrain.parse_options(["--model-size", "tiny", "--text-pooling", pooling])
        assert pretrain.build_model(options, tokenizer).config.resolved_text_pooling == pooling


def test_no_weight_decay_on_norms_biases_and_logit_scale():
    from modeling_lucafound.configuration_lucafound import lucafound_config_for_size
    from modeling_lucafound.modeling_lucafound import LuCaFoundModel

    model = LuCaFoundModel(lucafound_config_for_size("tiny", vocab_size=40))
    pretrain.set_tower_trainability(model, contrastive_loss_type="clip")
    decay, no_decay = pretrain.parameter_groups(model, 0.2)
    no_decay_ids = {id(parameter) for parameter in no_decay["params"]}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert id(model.logit_scale) in no_decay_ids
    assert all(parameter.ndim >= 2 for parameter in decay["params"])
    assert id(model.logit_bias) not in no_decay_ids | {id(parameter) for parameter in decay["params"]}


def test_freezing_the_vision_tower_leaves_only_text_and_projections_trainable():
    from modeling_lucafound.configuration_lucafound import lucafound_config_for_size
    from modeling_lucafound.modeling_lucafound import LuCaFoundModel

    model = LuCaFoundModel(lucafound_config_for_size("tiny", vocab_size=40))
    pretrain.set_tower_trainability(model, freeze_vision=True)
    assert not any(parameter.requires_grad for parameter in model.vision_model.parameters())
    assert model.visual_projection.weight.requires_grad and model.logit_scale.requires_grad
    assert all(parameter.requires_grad for parameter in model.text_model.parameters())


# ---------------------------------------------------------------------------------------------------------- outputs


def test_metrics_jsonl_has_one_training_entry_per_step_and_retrieval_entries(straight_run):
    output_dir, _ = straight_run
    lines = _metrics_lines(output_dir)
    training = [line for line in lines if "loss" in line]
    evaluation = [line for line in lines if "eval/i2t_r1" in line]
    assert [line["step"] for line in training] == [1, 2, 3, 4]
    assert all({"lr", "logit_scale"} <= set(line) and np.isfinite(line["loss"]) for line in training)
    assert [line["step"] for line in evaluation] == [2, 4]
    assert {"eval/t2i_r1", "eval/i2t_r5", "eval/t2i_r10"} <= set(evaluation[0])


def test_checkpoints_are_complete_and_carry_a_marker(straight_run):
    output_dir, result = straight_run
    checkpoints = sorted((output_dir / "checkpoints").iterdir())
    assert [path.name for path in checkpoints] == ["checkpoint-00000002", "checkpoint-00000004"]
    for path in checkpoints:
        assert (path / pretrain.COMPLETE_MARKER).is_file()
        assert json.loads((path / pretrain.TRAINING_STATE_FILE).read_text())["step"] == int(path.name[-8:])
    assert result["checkpoint_dir"] == str(checkpoints[-1])


def test_final_folder_loads_with_automodel_and_autoprocessor(straight_run):
    from transformers import AutoModel, AutoProcessor

    output_dir, result = straight_run
    model = AutoModel.from_pretrained(result["final_dir"], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(result["final_dir"], trust_remote_code=True)
    inputs = processor.tokenizer(["Spiculated nodule in the right upper lobe."], return_tensors="pt")
    pixel_values = torch.rand(1, 1, 16, 64, 64)
    with torch.no_grad():
        output = model(pixel_values=pixel_values, input_ids=inputs["input_ids"],
                       attention_mask=inputs["attention_mask"])
    assert output.image_embeds.shape == (1, 64)
    assert list(processor.image_processor.output_size) == [16, 64, 64]
    trained = _final_parameters(output_dir)
    torch.testing.assert_close(model.state_dict()["logit_scale"], trained["logit_scale"])


def test_resume_continues_exactly_like_an_uninterrupted_run(straight_run, tmp_path, cache_dir):
    """Steps 1-2, stop (only checkpoint 2 survives), resume to 4 == 4 steps straight, parameters to 1e-6."""
    straight_dir, _ = straight_run
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight_dir / "checkpoints" / "checkpoint-00000002",
                    interrupted / "checkpoints" / "checkpoint-00000002")
    straight_lines = _metrics_lines(straight_dir)
    (interrupted / "metrics.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in straight_lines if line["step"] <= 2)
    )
    # a checkpoint interrupted while saving must be ignored
    (interrupted / "checkpoints" / ".incomplete-checkpoint-00000003").mkdir()
    result = pretrain.main(_common_arguments(cache_dir, interrupted, 4) + ["--resume", "latest"])
    assert result["steps"] == 4
    expected, resumed = _final_parameters(straight_dir), _final_parameters(interrupted)
    assert set(expected) == set(resumed)
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=0, msg=name)
    resumed_losses = [line["loss"] for line in _metrics_lines(interrupted) if "loss" in line]
    straight_losses = [line["loss"] for line in straight_lines if "loss" in line]
    assert resumed_losses == pytest.approx(straight_losses, abs=1e-6)


def test_resume_from_a_folder_without_completion_marker_is_refused(tmp_path):
    broken = tmp_path / "checkpoint-00000002"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(pretrain.CheckpointNotFoundError, match="not a complete checkpoint"):
        pretrain.resolve_resume(pretrain.parse_options(["--resume", str(broken)]))


def test_latest_checkpoint_skips_incomplete_folders(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    complete = checkpoints / "checkpoint-00000002"
    complete.mkdir(parents=True)
    (complete / pretrain.TRAINING_STATE_FILE).write_text('{"step": 2}')
    (complete / pretrain.COMPLETE_MARKER).write_text("{}")
    (checkpoints / "checkpoint-00000004").mkdir()  # no marker: crashed before completion
    assert pretrain.find_latest_checkpoint(tmp_path) == complete


# ---------------------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def synthetic_splits(cache_dir):
    return load_dataset_splits("synthetic", num_samples=12, image_size=(16, 64, 64), seed=3, cache_dir=cache_dir,
                               phantom_shape=(32, 64, 64))


def test_building_in_two_processes_gives_the_same_cohort(synthetic_splits, tmp_path):
    built_in_two = load_dataset_splits("synthetic", num_samples=12, image_size=(16, 64, 64), seed=3,
                                       cache_dir=tmp_path, num_proc=2, phantom_shape=(32, 64, 64))
    for split in synthetic_splits:
        one, two = synthetic_splits[split], built_in_two[split]
        assert sorted(two["patient_id"]) == sorted(one["patient_id"])
        order = {patient: index for index, patient in enumerate(two["patient_id"])}
        for row in one:
            other = two[order[row["patient_id"]]]
            assert other["report"] == row["report"]
            np.testing.assert_array_equal(np.asarray(other["pixel_values"]), np.asarray(row["pixel_values"]))


def test_training_transform_gives_channel_first_float32_volumes_in_unit_range(synthetic_splits):
    train = set_ct_transforms(add_example_index(synthetic_splits["train"]), CTAugmentation(seed=0))
    volume = train[0]["pixel_values"]
    assert volume.shape == (1, 16, 64, 64) and volume.dtype == np.float32
    assert 0.0 <= volume.min() and volume.max() <= 1.0


def test_augmentation_is_reproducible_per_example_and_changes_with_the_epoch(synthetic_splits):
    augmentation = CTAugmentation(seed=0, affine_probability=1.0, intensity_probability=1.0)
    train = set_ct_transforms(add_example_index(synthetic_splits["train"]), augmentation)
    first, again = train[1]["pixel_values"], train[1]["pixel_values"]
    augmentation.set_epoch(1)
    next_epoch = train[1]["pixel_values"]
    deterministic = set_ct_transforms(add_example_index(synthetic_splits["train"]))[1]["pixel_values"]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, next_epoch)
    assert not np.allclose(first, deterministic)


def test_flips_are_off_by_default_because_reports_name_the_side():
    volume = np.zeros((1, 4, 4, 4), dtype=np.float32)
    volume[0, :, :, 0] = 1.0
    augmentation = CTAugmentation(seed=0, affine_probability=0.0, intensity_probability=0.0)
    for index in range(20):
        np.testing.assert_array_equal(augmentation(volume, index), volume)
    flipping = CTAugmentation(seed=0, flip_probability=1.0, flip_axes=(2,), affine_probability=0.0,
                              intensity_probability=0.0)
    np.testing.assert_array_equal(flipping(volume, 0), volume[..., ::-1])


def test_collate_stacks_volumes_and_tokenises_reports(synthetic_splits):
    from modeling_lucafound.report_tokenizer import train_report_tokenizer

    split = synthetic_splits["train"]
    tokenizer = train_report_tokenizer(split["report"], vocab_size=300)
    batch = collate_ct_batch([split[0], split[1]], tokenizer=tokenizer, max_length=32, label_columns=("histology",))
    assert batch["pixel_values"].shape == (2, 1, 16, 64, 64) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[1] <= 32
    assert batch["histology"].dtype == torch.long


def test_process_shards_are_disjoint_and_cover_the_split(synthetic_splits):
    indexed = add_example_index(synthetic_splits["train"])
    shards = [list(shard_for_process(indexed, rank, 2)["example_index"]) for rank in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(len(indexed)))


def test_sampler_order_depends_only_on_seed_and_epoch_and_resumes_mid_epoch():
    full = list(EpochShuffleSampler(10, seed=1, epoch=2))
    assert full == list(EpochShuffleSampler(10, seed=1, epoch=2))
    assert full != list(EpochShuffleSampler(10, seed=1, epoch=3))
    assert list(EpochShuffleSampler(10, seed=1, epoch=2, start=4)) == full[4:]
    assert sorted(full) == list(range(10))


# ---------------------------------------------------------------------------------------------------------- retrieval


def test_retrieval_metrics_are_perfect_for_identical_embeddings_and_low_for_shuffled():
    embeds = torch.eye(12)
    perfect = retrieval_metrics(embeds, embeds)
    assert perfect["i2t_r1"] == 1.0 and perfect["t2i_r1"] == 1.0 and perfect["i2t_median_rank"] == 1.0
    shifted = retrieval_metrics(embeds, embeds.roll(1, dims=0))
    assert shifted["i2t_r1"] == 0.0 and shifted["t2i_r10"] < 1.0
    assert shifted["chance_r1"] == pytest.approx(1 / 12)


def test_collapsed_embeddings_score_no_better_than_last():
    collapsed = torch.ones(5, 3)
    metrics = retrieval_metrics(collapsed, collapsed)
    assert metrics["i2t_r1"] == 0.0 and metrics["i2t_median_rank"] == 5.0
