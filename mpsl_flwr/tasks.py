"""Losses and metrics of the two task kinds: classification and image-text retrieval."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

RECALL_KS = (1, 5, 10)


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean softmax cross-entropy."""
    return F.cross_entropy(logits, labels)


def contrastive_loss(embeddings: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE over all pairs in the batch (CLIP); ``embeddings`` is ``[B, 2, E]``.

    Every other sample of the batch is a negative, so with MPSL the negatives come from
    the whole global batch, as in centralized training.
    """
    from open_clip.loss import ClipLoss

    image, text = embeddings[:, 0], embeddings[:, 1]
    return ClipLoss()(image, text, logit_scale.exp().clamp(max=100.0))


def accuracy_counts(logits: Tensor, labels: Tensor) -> int:
    """Number of correct top-1 predictions."""
    return int((logits.argmax(dim=-1) == labels).sum())


def recall_at_k(embeddings: Tensor, pair_ids: Tensor, ks: tuple[int, ...] = RECALL_KS) -> dict:
    """Recall@k both ways over a test set of ``[N, 2, E]`` normalised embeddings.

    ``pair_ids`` name the image each caption belongs to, so a set with several captions
    per image is scored the standard (Karpathy) way: image-to-text queries are the
    distinct images and a hit is any of their captions; text-to-image queries are all
    captions.
    """
    ids = pair_ids.cpu().numpy()
    _, first = np.unique(ids, return_index=True)
    first = torch.as_tensor(np.sort(first))
    images = embeddings[first, 0].float()
    image_ids = pair_ids[first]
    texts = embeddings[:, 1].float()
    sim = images @ texts.T  # [images, texts]
    out: dict[str, float] = {}
    for k in ks:
        k_t = min(k, texts.shape[0])
        top_texts = sim.topk(k_t, dim=1).indices
        hits_i2t = (pair_ids[top_texts] == image_ids[:, None]).any(dim=1)
        k_i = min(k, images.shape[0])
        top_images = sim.T.topk(k_i, dim=1).indices
        hits_t2i = (image_ids[top_images] == pair_ids[:, None]).any(dim=1)
        out[f"i2t-r{k}"] = float(hits_i2t.float().mean())
        out[f"t2i-r{k}"] = float(hits_t2i.float().mean())
    out["rsum"] = float(sum(out.values()))
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int, device: torch.device) -> dict:
    """Test metrics of a whole model (head + server) on ``dataset``.

    Classification: accuracy and mean loss. Retrieval: recall@1/5/10 both ways.
    """
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(np.arange(start, min(start + batch_size, len(dataset))))
        batch = {k: v.to(device) for k, v in batch.items()}
        outputs.append(model(batch).float().cpu())
        labels.append(batch["label"].cpu())
    model.train(was_training)
    z, y = torch.cat(outputs), torch.cat(labels)
    if dataset.info.kind == "retrieval":
        return recall_at_k(z, y)
    return {
        "accuracy": accuracy_counts(z, y) / len(y),
        "loss": float(classification_loss(z, y)),
    }
