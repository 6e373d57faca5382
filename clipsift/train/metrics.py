"""The contrastive loss and retrieval recall@k for the held-out split.

Example:
    >>> img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    >>> retrieval_recall(img, img, torch.arange(4)).image_to_text[1]
    1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from clipsift.train.data import PairBatch, PairItem

KS = (1, 5, 10)


def same_caption(tokens: torch.Tensor) -> torch.Tensor:
    """[N, context] token ids -> [N, N] bool, True where two rows hold the same caption."""
    return (tokens[:, None, :] == tokens[None, :, :]).all(dim=-1)


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
    same_text: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy over the N×N similarity matrix (CLIP's loss).

    Args:
        image_features: [N, D], L2-normalised.
        text_features: [N, D], L2-normalised; row i is the caption of image i.
        logit_scale: scalar temperature multiplier (exp of the learnable parameter).
        same_text: optional [N, N] bool of identical captions; a batch holding the same
            caption twice then spreads the target over those columns instead of calling
            one of them a negative.
    Returns:
        scalar loss (float32).
    """
    logits = logit_scale.float() * image_features.float() @ text_features.float().T  # [N, N]
    n = logits.shape[0]
    if same_text is None or not bool(same_text.sum() > n):
        target = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    soft = same_text.float()
    soft = soft / soft.sum(dim=1, keepdim=True)  # [N, N], rows sum to 1, symmetric support
    return (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft)) / 2


@dataclass
class RetrievalMetrics:
    """Recall@k (fractions in [0, 1]) in both directions over a held-out set.

    image_to_text[k]: share of images whose own caption (any of them) ranks in the top k.
    text_to_image[k]: share of captions whose image ranks in the top k.
    """

    image_to_text: dict[int, float] = field(default_factory=dict)
    text_to_image: dict[int, float] = field(default_factory=dict)
    n_images: int = 0
    n_texts: int = 0
    loss: float | None = None

    def flat(self) -> dict[str, float | int | None]:
        """{'i2t_r1': .., 'i2t_r5': .., 't2i_r1': .., 'n_images': .., 'val_loss': ..}."""
        out: dict[str, float | int | None] = {}
        for k, v in self.image_to_text.items():
            out[f"i2t_r{k}"] = round(v, 6)
        for k, v in self.text_to_image.items():
            out[f"t2i_r{k}"] = round(v, 6)
        out["n_images"], out["n_texts"] = self.n_images, self.n_texts
        out["val_loss"] = None if self.loss is None else round(self.loss, 6)
        return out


@dataclass
class EpochMetrics:
    """What one epoch measured. `partial` marks an epoch cut short by max_steps."""

    epoch: int
    step: int
    train_loss: float
    lr: float
    logit_scale: float
    samples: int
    seconds: float
    samples_per_s: float
    bad_images: int
    retrieval: RetrievalMetrics = field(default_factory=RetrievalMetrics)
    partial: bool = False

    def to_json(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in (
            "epoch", "step", "samples", "bad_images", "partial")}
        for k in ("train_loss", "lr", "logit_scale", "seconds", "samples_per_s"):
            row[k] = round(float(getattr(self, k)), 6)
        row.update(self.retrieval.flat())
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> EpochMetrics:
        """Inverse of `to_json` (used when resuming a run)."""
        rec = RetrievalMetrics(
            image_to_text={int(k[5:]): v for k, v in row.items() if k.startswith("i2t_r")},
            text_to_image={int(k[5:]): v for k, v in row.items() if k.startswith("t2i_r")},
            n_images=row.get("n_images", 0), n_texts=row.get("n_texts", 0),
            loss=row.get("val_loss"))
        names = ("epoch", "step", "train_loss", "lr", "logit_scale", "samples", "seconds",
                 "samples_per_s", "bad_images", "partial")
        return cls(**{k: row[k] for k in names}, retrieval=rec)


def retrieval_recall(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_owner: torch.Tensor,
    ks: Sequence[int] = KS, chunk: int = 1024,
) -> RetrievalMetrics:
    """Recall@k both ways. image_emb [N, D], text_emb [M, D] (unit rows), text_owner [M].

    Ties count in the model's favour (rank = number of strictly better candidates).
    """
    n, m = image_emb.shape[0], text_emb.shape[0]
    if n == 0 or m == 0:
        return RetrievalMetrics(n_images=n, n_texts=m)
    owner = text_owner.long()
    i2t_rank = torch.empty(n, dtype=torch.long)
    for start in range(0, n, chunk):
        sims = image_emb[start:start + chunk] @ text_emb.T  # [c, M]
        mine = owner[None, :] == torch.arange(start, start + sims.shape[0])[:, None]  # [c, M]
        best_own = sims.masked_fill(~mine, float("-inf")).max(dim=1, keepdim=True).values
        i2t_rank[start:start + sims.shape[0]] = (sims > best_own).sum(dim=1)
    t2i_rank = torch.empty(m, dtype=torch.long)
    for start in range(0, m, chunk):
        sims = text_emb[start:start + chunk] @ image_emb.T  # [c, N]
        own = sims.gather(1, owner[start:start + sims.shape[0], None])  # [c, 1]
        t2i_rank[start:start + sims.shape[0]] = (sims > own).sum(dim=1)
    return RetrievalMetrics(
        image_to_text={k: float((i2t_rank < k).float().mean()) for k in ks},
        text_to_image={k: float((t2i_rank < k).float().mean()) for k in ks},
        n_images=n, n_texts=m,
    )


@torch.no_grad()
def evaluate_retrieval(
    module: torch.nn.Module, loader: torch.utils.data.DataLoader, items: Sequence[PairItem],
    tokenizer: Callable[[list[str]], torch.Tensor], device: torch.device,
    autocast: Callable[[], object], batch_size: int,
) -> tuple[RetrievalMetrics, list[str]]:
    """Embed the held-out images (via `loader`) and all their captions; score recall@k.

    Returns the metrics (with `loss`: the contrastive loss over batches of image + first
    caption) and the list of images that could not be read.
    """
    was_training = module.training
    module.eval()
    feats, kept, bad = [], [], []
    for batch in loader:
        batch: PairBatch
        bad.extend(batch.bad)
        if batch.indices:
            with autocast():
                feats.append(module.encode_image(batch.images.to(device), normalize=True).float())
            kept.extend(batch.indices)
    texts, owner = [], []
    for row, idx in enumerate(kept):
        texts.extend(items[idx].captions)
        owner.extend([row] * len(items[idx].captions))
    text_feats = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start:start + batch_size]).to(device)
        with autocast():
            text_feats.append(module.encode_text(tokens, normalize=True).float())
    module.train(was_training)
    if not feats or not text_feats:
        return RetrievalMetrics(), bad
    img, txt = torch.cat(feats).cpu(), torch.cat(text_feats).cpu()
    owner_t = torch.tensor(owner)
    metrics = retrieval_recall(img, txt, owner_t)
    metrics.loss = _held_out_loss(img, txt, owner_t, module, batch_size)
    return metrics, bad


def _held_out_loss(img: torch.Tensor, txt: torch.Tensor, owner: torch.Tensor,
                   module: torch.nn.Module, batch_size: int) -> float | None:
    first = torch.full((img.shape[0],), -1, dtype=torch.long)
    for j in range(owner.shape[0] - 1, -1, -1):  # first caption of each image
        first[owner[j]] = j
    scale = module.logit_scale.detach().exp().cpu()
    losses, weights = [], []
    for start in range(0, img.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        if img[sl].shape[0] < 2:
            continue
        losses.append(float(contrastive_loss(img[sl], txt[first[sl]], scale)))
        weights.append(img[sl].shape[0])
    if not losses:
        return None
    return sum(v * w for v, w in zip(losses, weights, strict=True)) / sum(weights)
