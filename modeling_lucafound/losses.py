"""Loss functions of LuCaFound: CLIP and SigLIP contrastive losses (local or over the global batch) and the Cox loss.

The model's own forward uses the local versions; distributed training passes `gather_distributed=True`, which
all-gathers the embeddings of every process with gradients so that N processes x b samples give the same loss
and gradients as one process with N*b samples.
"""

import torch
import torch.nn.functional as F


def distributed_world():
    """(rank, world size) of the default process group, or (0, 1) when not running distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_with_gradients(tensor):
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph to each process's part.

    The backward of the gather sums, on each process, the gradients that all processes computed for its rows;
    with DDP's gradient averaging this gives exactly the single-process gradient of the global-batch loss.
    """
    _, world_size = distributed_world()
    if world_size == 1:
        return tensor
    from torch.distributed._functional_collectives import all_gather_tensor_autograd

    return all_gather_tensor_autograd(tensor.contiguous(), gather_dim=0, group=torch.distributed.group.WORLD)


def _global_embeddings(image_embeds, text_embeds, gather_distributed):
    if not gather_distributed:
        return image_embeds, text_embeds, 0
    rank, _ = distributed_world()
    return gather_with_gradients(image_embeds), gather_with_gradients(text_embeds), rank * image_embeds.shape[0]


def clip_contrastive_loss(image_embeds, text_embeds, logit_scale, gather_distributed=False):
    """Symmetric InfoNCE over L2-normalised embeddings; `logit_scale` is the log temperature (exp is applied here).

    With `gather_distributed`, each process scores its own images and texts against the texts and images of the
    global batch (labels offset by rank); the mean over processes (DDP) equals the global-batch loss.
    """
    all_images, all_texts, offset = _global_embeddings(image_embeds, text_embeds, gather_distributed)
    scale = logit_scale.exp()
    logits_per_image = scale * image_embeds @ all_texts.t()
    logits_per_text = scale * text_embeds @ all_images.t()
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + offset
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


def siglip_contrastive_loss(image_embeds, text_embeds, logit_scale, logit_bias, gather_distributed=False):
    """Pairwise sigmoid loss (SigLIP) over L2-normalised embeddings, summed over texts and averaged over images.

    With `gather_distributed`, each process scores its own images against every text of the global batch; the
    normalisation by the local batch makes the DDP mean equal to the global-batch loss.
    """
    _, all_texts, offset = _global_embeddings(image_embeds, text_embeds, gather_distributed)
    logits = logit_scale.exp() * image_embeds @ all_texts.t() + logit_bias
    targets = -torch.ones_like(logits)
    rows = torch.arange(image_embeds.shape[0], device=logits.device)
    targets[rows, rows + offset] = 1.0
    return -F.logsigmoid(targets * logits).sum() / image_embeds.shape[0]


def cox_partial_likelihood_loss(risk, duration, event):
    """Negative Cox partial log-likelihood with Breslow ties, averaged over events.

    `risk` (B,) log-hazard scores, `duration` (B,) follow-up times, `event` (B,) 1 for an observed event and 0 for
    censoring. A batch without events carries no information for the Cox model: the loss is then exactly zero
    (with a graph to `risk`, so backward works), never NaN.
    """
    risk = risk.reshape(-1).float()
    duration = duration.reshape(-1).to(risk.device, torch.float32)
    event = event.reshape(-1).to(risk.device, torch.float32)
    number_of_events = event.sum()
    if number_of_events == 0:
        return risk.sum() * 0.0
    # Breslow: the risk set of an event at time t is every subject with duration >= t (ties included).
    at_risk = (duration.unsqueeze(0) >= duration.unsqueeze(1)).float()  # row i: subjects at risk at time of i
    masked = risk.unsqueeze(0) + torch.log(at_risk)  # log(0) = -inf drops subjects outside the risk set
    log_risk_set = torch.logsumexp(masked, dim=1)
    return -((risk - log_risk_set) * event).sum() / number_of_events


__all__ = [
    "clip_contrastive_loss",
    "siglip_contrastive_loss",
    "cox_partial_likelihood_loss",
    "gather_with_gradients",
    "distributed_world",
]
