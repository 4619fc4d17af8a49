"""Cross-modal retrieval recall where captions repeat (ShapesWorld says "a red circle" of many scenes): a
retrieved item is a hit when its caption equals the query's, and chance is computed the same way."""
from __future__ import annotations

import math

import torch


def _groups(captions: list[str]) -> torch.Tensor:
    """Caption ids: items with equal captions share one."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(c, len(index)) for c in captions])


def recall_at_k(sim: torch.Tensor, query_captions: list[str], item_captions: list[str], ks=(1, 5)) -> dict:
    """sim Q,N (higher is closer) -> {"R@k": share of queries with a hit in their top k}."""
    groups = _groups(list(query_captions) + list(item_captions))
    gq, gi = groups[: len(query_captions)], groups[len(query_captions):]
    top = sim.topk(max(ks), dim=1).indices
    hit = gi[top] == gq[:, None]
    return {f"R@{k}": float(hit[:, :k].any(1).float().mean()) for k in ks}


def chance_recall(query_captions: list[str], item_captions: list[str], ks=(1, 5)) -> dict:
    """The recall of a random ranking: for a query whose caption m of the N items share,
    P(hit in top k) = 1 - C(N - m, k) / C(N, k); averaged over the queries."""
    n = len(item_captions)
    counts: dict[str, int] = {}
    for c in item_captions:
        counts[c] = counts.get(c, 0) + 1
    out = {}
    for k in ks:
        p = [1 - math.comb(n - counts.get(q, 0), k) / math.comb(n, k) for q in query_captions]
        out[f"R@{k}"] = sum(p) / len(p)
    return out


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str], ks=(1, 5)) -> dict:
    """Image->text and text->image recall of paired, l2-normalised embeddings (row i of each is pair i), with
    chance alongside: {"i2t_R@1", ..., "t2i_R@5", "chance_R@1", "chance_R@5"}."""
    sim = image_emb.float() @ text_emb.float().t()
    out = {f"i2t_{k}": v for k, v in recall_at_k(sim, captions, captions, ks).items()}
    out.update({f"t2i_{k}": v for k, v in recall_at_k(sim.t(), captions, captions, ks).items()})
    out.update({f"chance_{k}": v for k, v in chance_recall(captions, captions, ks).items()})
    return out
