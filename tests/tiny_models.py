"""Tiny LuCaFound configs and inputs shared by the model tests (fast on two CPU cores)."""

import torch

from modeling_lucafound.configuration_lucafound import LuCaFoundConfig

TINY_VISION = dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4, 4], image_size=[8, 32, 32])
TINY_TEXT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64)


def tiny_config(**overrides):
    return LuCaFoundConfig(vision_config=dict(TINY_VISION), text_config=dict(TINY_TEXT), projection_dim=16, **overrides)


def tiny_batch(batch_size=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.rand(batch_size, 1, 8, 32, 32, generator=generator)
    input_ids = torch.randint(5, 120, (batch_size, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 6:] = 0
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
