"""Worker for tests/test_distributed_loss.py: one training step of `train.pretrain` under torchrun (or alone).

Every process builds the same tiny model and the same global batch, takes its own rows, runs
`contrastive_training_step` through Accelerate, and rank 0 saves the global loss and the (all-reduced)
gradients for CLIP and SigLIP, with and without gradient accumulation, to `--output`.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GLOBAL_BATCH = 4
IMAGE_SIZE = (16, 32, 32)
TEXT_LENGTH = 12
VOCAB_SIZE = 50


def tiny_model(loss_type):
    """A deterministic tiny dual encoder without dropout or stochastic depth (so passes are repeatable)."""
    from modeling_lucafound.configuration_lucafound import lucafound_config_for_size
    from modeling_lucafound.modeling_lucafound import LuCaFoundModel

    config = lucafound_config_for_size("tiny", vocab_size=VOCAB_SIZE, contrastive_loss=loss_type)
    config.vision_config.stochastic_depth_prob = 0.0
    config.vision_config.image_size = list(IMAGE_SIZE)
    config.text_config.hidden_dropout_prob = 0.0
    config.text_config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    model = LuCaFoundModel(config)
    with torch.no_grad():
        model.logit_bias.fill_(-2.0)  # away from the -10 initialisation so SigLIP positives matter
    return model


def global_batch():
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.rand(GLOBAL_BATCH, 1, *IMAGE_SIZE, generator=generator)
    input_ids = torch.randint(5, VOCAB_SIZE, (GLOBAL_BATCH, TEXT_LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    attention_mask[3, 5:] = 0
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


def run_case(accelerator, loss_type, accumulation_steps):
    from train.pretrain import ContrastiveTrainingModule, contrastive_training_step, set_tower_trainability

    model = tiny_model(loss_type)
    set_tower_trainability(model, contrastive_loss_type=loss_type)
    module = accelerator.prepare(ContrastiveTrainingModule(model))
    module.train()
    batch = global_batch()
    rows = GLOBAL_BATCH // accelerator.num_processes
    start = accelerator.process_index * rows
    local = {name: value[start:start + rows] for name, value in batch.items()}
    micro = rows // accumulation_steps
    micro_batches = [
        {name: value[index * micro:(index + 1) * micro].to(accelerator.device) for name, value in local.items()}
        for index in range(accumulation_steps)
    ]
    loss, _, _ = contrastive_training_step(accelerator, module, micro_batches, loss_type)
    gradients = {
        name: parameter.grad.detach().clone().cpu()
        for name, parameter in accelerator.unwrap_model(module).model.named_parameters()
        if parameter.grad is not None
    }
    return float(loss), gradients


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    options = parser.parse_args()
    from train.pretrain import build_accelerator

    accelerator = build_accelerator()
    results = {}
    for loss_type in ("clip", "siglip"):
        for accumulation_steps in (1, 2):
            loss, gradients = run_case(accelerator, loss_type, accumulation_steps)
            results[f"{loss_type}/accumulation{accumulation_steps}"] = {"loss": loss, "gradients": gradients}
    if accelerator.is_main_process:
        results["num_processes"] = accelerator.num_processes
        torch.save(results, options.output)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
