"""The two tasks a run can train: classification and image-text retrieval.

A :class:`Task` owns everything that differs between them: the training loss, the test
metrics, the headline metric and table columns of a run, the tail on top of the
encoder, the default fusion, and where the loss is computed. Code that trains or
reports asks the task (``task_of(info)``) instead of comparing ``info.kind`` strings,
so the two tasks differ in one place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpsl_flwr.config import ConfigError
from mpsl_flwr.data.base import DatasetInfo, Kind, MultimodalDataset
from mpsl_flwr.models.server import ClassificationTail, RetrievalTail

RECALL_KS = (1, 5, 10)
RETRIEVAL_EMBED_DIM = 256
# Columns of the console table that every task shows around its own test metrics.
_TABLE_HEAD = ("epoch", "train-loss")
_TABLE_TAIL = ("mb-up-per-client", "mb-down-per-client", "epoch-time-s", "wall-time-s")


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
    _, first_np = np.unique(ids, return_index=True)
    first = torch.as_tensor(np.sort(first_np))
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


class Task(ABC):
    """What one task trains for and how a run reports it.

    Attributes
    ----------
    kind : str
        The ``DatasetInfo.kind`` this task serves.
    headline : str
        The history column a run is judged by (tables, plots, comparisons).
    table_metrics : tuple[str, ...]
        The test columns the console table shows.
    reports_train_accuracy : bool
        Whether a training step counts correct predictions (history ``train-accuracy``).
    labels_on_client : bool
        Whether the loss needs labels that only the client holds. Then MPSL sends each
        client its output slice and the client computes its loss (the loss leg);
        otherwise the server computes the loss over the whole global batch.
    labels_are_pair_ids : bool
        Whether the ``label`` column names the pair a sample belongs to (the image of a
        caption) rather than a class: partitions then keep pairs whole.
    default_fusion : str
        What ``fusion=auto`` means for this task (see :meth:`fusion`).
    """

    kind: ClassVar[Kind]
    headline: ClassVar[str]
    table_metrics: ClassVar[tuple[str, ...]]
    reports_train_accuracy: ClassVar[bool]
    labels_on_client: ClassVar[bool]
    labels_are_pair_ids: ClassVar[bool]
    default_fusion: ClassVar[str]

    @property
    def table_columns(self) -> tuple[str, ...]:
        """The console table's columns, in order."""
        return (*_TABLE_HEAD, *self.table_metrics, *_TABLE_TAIL)

    def fusion(self, choice: str) -> str:
        """The fusion (``early``/``late``) that ``fusion=choice`` means for this task;
        raises if it cannot serve the task."""
        return self.default_fusion if choice == "auto" else choice

    def chance(self, num_classes: int) -> float | None:
        """The headline metric of guessing uniformly at random (plots draw it as a line);
        None where it depends on more than the class count."""
        return None

    @abstractmethod
    def make_tail(self, width: int, num_classes: int, temperature: float) -> nn.Module:
        """The server's task head on top of the encoder's pooled read-outs."""

    @abstractmethod
    def loss(
        self, output: Tensor, *, labels: Tensor | None = None, tail: nn.Module | None = None
    ) -> Tensor:
        """Training loss of ``output`` (the tail's output for a batch).

        Classification needs ``labels``; retrieval needs the ``tail`` (its learned logit
        scale). Each side of a split passes what it holds.
        """

    def correct(self, output: Tensor, labels: Tensor) -> int:
        """Correct predictions in a training batch (0 where the task has none)."""
        return 0

    @abstractmethod
    def metrics(self, outputs: Tensor, labels: Tensor) -> dict[str, float]:
        """Test metrics of the outputs of a whole test split (keys without ``test-``)."""

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        dataset: MultimodalDataset,
        batch_size: int,
        device: torch.device,
    ) -> dict[str, float]:
        """Test metrics of a whole model (head + server) on ``dataset``."""
        was_training = model.training
        model.eval()
        outputs, labels = [], []
        for start in range(0, len(dataset), batch_size):
            batch = dataset.batch(np.arange(start, min(start + batch_size, len(dataset))))
            batch = {k: v.to(device) for k, v in batch.items()}
            outputs.append(model(batch).float().cpu())
            labels.append(batch["label"].cpu())
        model.train(was_training)
        return self.metrics(torch.cat(outputs), torch.cat(labels))


class Classification(Task):
    """Softmax cross-entropy on the client's labels; test accuracy and loss."""

    kind = "classification"
    headline = "test-accuracy"
    table_metrics = ("test-accuracy",)
    reports_train_accuracy = True
    labels_on_client = True
    labels_are_pair_ids = False
    default_fusion = "early"

    def chance(self, num_classes: int) -> float | None:
        return 1.0 / num_classes

    def make_tail(self, width: int, num_classes: int, temperature: float) -> nn.Module:
        return ClassificationTail(width, num_classes)

    def loss(
        self, output: Tensor, *, labels: Tensor | None = None, tail: nn.Module | None = None
    ) -> Tensor:
        if labels is None:
            raise ValueError("the classification loss needs the batch's labels.")
        return classification_loss(output, labels)

    def correct(self, output: Tensor, labels: Tensor) -> int:
        return accuracy_counts(output, labels)

    def metrics(self, outputs: Tensor, labels: Tensor) -> dict[str, float]:
        return {
            "accuracy": accuracy_counts(outputs, labels) / len(labels),
            "loss": float(classification_loss(outputs, labels)),
        }


class Retrieval(Task):
    """CLIP contrastive loss over the whole batch; recall@1/5/10 both ways.

    It needs no labels (every other sample of the batch is a negative), so under MPSL
    the server computes it over the global batch and there is no loss leg.
    """

    kind = "retrieval"
    headline = "test-rsum"
    table_metrics = ("test-i2t-r1", "test-t2i-r1", "test-rsum")
    reports_train_accuracy = False
    labels_on_client = False
    labels_are_pair_ids = True
    default_fusion = "late"
    pair = ("image", "text")

    def fusion(self, choice: str) -> str:
        if choice == "early":
            raise ConfigError(
                "Run-config key 'fusion' is 'early', but retrieval embeds image and text "
                "separately (one embedding each). Fix: fusion=late (or auto)."
            )
        return super().fusion(choice)

    def make_tail(self, width: int, num_classes: int, temperature: float) -> nn.Module:
        return RetrievalTail(width, RETRIEVAL_EMBED_DIM, self.pair, temperature)

    def loss(
        self, output: Tensor, *, labels: Tensor | None = None, tail: nn.Module | None = None
    ) -> Tensor:
        if tail is None:
            raise ValueError("the contrastive loss needs the tail (its logit scale).")
        return contrastive_loss(output, tail.get_parameter("logit_scale"))

    def metrics(self, outputs: Tensor, labels: Tensor) -> dict[str, float]:
        return recall_at_k(outputs, labels)


CLASSIFICATION = Classification()
RETRIEVAL = Retrieval()
TASKS: dict[str, Task] = {t.kind: t for t in (CLASSIFICATION, RETRIEVAL)}


def task_of(info: DatasetInfo | str) -> Task:
    """The task of a dataset (its ``DatasetInfo``, or its ``kind``)."""
    kind = info if isinstance(info, str) else info.kind
    if kind not in TASKS:
        raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(TASKS)}.")
    return TASKS[kind]
