"""Loss functions: CLIP and SigLIP against their textbook definitions, the Cox loss against a direct Breslow sum."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_lucafound.losses import clip_contrastive_loss, cox_partial_likelihood_loss, siglip_contrastive_loss


def normalised(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_clip_loss_is_the_mean_of_image_and_text_cross_entropies():
    images, texts = normalised(6, 8), normalised(6, 8)
    log_scale = torch.tensor(math.log(10.0), dtype=torch.float64)
    logits = 10.0 * images @ texts.t()
    expected = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6)))
    torch.testing.assert_close(clip_contrastive_loss(images, texts, log_scale), expected)


def test_clip_loss_is_low_for_aligned_pairs_and_high_for_shuffled_ones():
    images = normalised(8, 16)
    log_scale = torch.tensor(math.log(100.0), dtype=torch.float64)
    aligned = clip_contrastive_loss(images, images, log_scale)
    shuffled = clip_contrastive_loss(images, images.roll(1, dims=0), log_scale)
    assert aligned < 0.01 < shuffled


def test_siglip_loss_sums_pairwise_sigmoid_terms_over_texts_and_averages_over_images():
    images, texts = normalised(5, 8), normalised(5, 8)
    log_scale, bias = torch.tensor(math.log(10.0), dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    logits = 10.0 * images @ texts.t() - 3.0
    labels = 2 * torch.eye(5, dtype=torch.float64) - 1
    expected = -F.logsigmoid(labels * logits).sum() / 5
    torch.testing.assert_close(siglip_contrastive_loss(images, texts, log_scale, bias), expected)


def breslow_negative_log_likelihood(risk, duration, event):
    """Direct sum over events: -(r_i - log sum_{j: t_j >= t_i} exp(r_j)), averaged over events."""
    total, events = 0.0, 0
    for index in range(len(risk)):
        if event[index]:
            at_risk = [risk[other] for other in range(len(risk)) if duration[other] >= duration[index]]
            total -= risk[index] - math.log(sum(math.exp(value) for value in at_risk))
            events += 1
    return total / events


def test_cox_loss_equals_the_breslow_partial_likelihood_with_ties():
    risk = [0.3, -1.2, 0.8, 0.1, 2.0, -0.4]
    duration = [5.0, 3.0, 3.0, 8.0, 1.0, 3.0]  # three subjects tie at t = 3
    event = [1, 1, 0, 1, 1, 1]
    loss = cox_partial_likelihood_loss(torch.tensor(risk), torch.tensor(duration), torch.tensor(event))
    assert loss.item() == pytest.approx(breslow_negative_log_likelihood(risk, duration, event), rel=1e-6)


def test_cox_loss_without_events_is_zero_and_differentiable():
    risk = torch.tensor([0.5, -0.2, 1.0], requires_grad=True)
    loss = cox_partial_likelihood_loss(risk, torch.tensor([2.0, 4.0, 6.0]), torch.zeros(3))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(risk.grad, torch.zeros(3))


def test_cox_loss_rewards_ranking_earlier_events_as_riskier():
    duration, event = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.ones(4)
    concordant = cox_partial_likelihood_loss(torch.tensor([3.0, 2.0, 1.0, 0.0]), duration, event)
    discordant = cox_partial_likelihood_loss(torch.tensor([0.0, 1.0, 2.0, 3.0]), duration, event)
    assert concordant < discordant
