"""Cross-modal retrieval metrics (Recall@K, median rank) between paired CT and report embeddings."""

import torch
import torch.nn.functional as F


def retrieval_ranks(query_embeds, gallery_embeds):
    """Rank (0 = best) of each query's own partner (same row index) among all gallery items, by cosine similarity.

    Ties count against the query (a partner tied with another item gets the worse rank), so a collapsed
    embedding never scores well by accident.
    """
    if query_embeds.shape[0] != gallery_embeds.shape[0]:
        raise ValueError(
            f"retrieval needs paired embeddings: {query_embeds.shape[0]} queries but {gallery_embeds.shape[0]} gallery items"
        )
    query = F.normalize(query_embeds.float(), dim=-1)
    gallery = F.normalize(gallery_embeds.float(), dim=-1)
    similarity = query @ gallery.t()
    partner_score = similarity.diagonal().unsqueeze(1)
    others = torch.ones_like(similarity, dtype=torch.bool)
    others.fill_diagonal_(False)
    return ((similarity >= partner_score) & others).sum(dim=1)


def retrieval_metrics(image_embeds, text_embeds, ks=(1, 5, 10), prefix=""):
    """Recall@K and median rank for image-to-text (`i2t`) and text-to-image (`t2i`) retrieval.

    Row i of `image_embeds` and row i of `text_embeds` are a pair. Keys look like `i2t_r1`, `t2i_r10`,
    `i2t_median_rank` (1-based), with `prefix` prepended; `chance_r1` is the R@1 of random embeddings (1/N).
    """
    metrics = {}
    count = image_embeds.shape[0]
    for direction, (queries, gallery) in {"i2t": (image_embeds, text_embeds), "t2i": (text_embeds, image_embeds)}.items():
        ranks = retrieval_ranks(queries, gallery)
        for k in ks:
            metrics[f"{prefix}{direction}_r{k}"] = float((ranks < k).float().mean())
        metrics[f"{prefix}{direction}_median_rank"] = float(ranks.float().median() + 1)
    metrics[f"{prefix}chance_r1"] = 1.0 / count if count else 0.0
    metrics[f"{prefix}num_pairs"] = int(count)
    return metrics


__all__ = ["retrieval_ranks", "retrieval_metrics"]
