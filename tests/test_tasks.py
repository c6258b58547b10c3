"""The Task object: loss, metrics, headline, columns and where labels live, per task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpsl_flwr.config import RunConfig
from mpsl_flwr.data.registry import dataset_info
from mpsl_flwr.models.server import ClassificationTail, RetrievalTail
from mpsl_flwr.tasks import (
    CLASSIFICATION,
    RETRIEVAL,
    contrastive_loss,
    recall_at_k,
    task_of,
)


def test_task_comes_from_the_dataset_info():
    assert task_of(dataset_info(RunConfig(dataset="synthetic-vqa").data)) is CLASSIFICATION
    assert task_of(dataset_info(RunConfig(dataset="synthetic-at").data)) is CLASSIFICATION
    assert task_of(dataset_info(RunConfig(dataset="synthetic-retrieval").data)) is RETRIEVAL
    assert task_of("retrieval") is RETRIEVAL
    with pytest.raises(ValueError, match="unknown task kind"):
        task_of("regression")


def test_classification_loss_is_cross_entropy_on_the_labels():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    loss = CLASSIFICATION.loss(logits, labels=labels)
    assert torch.equal(loss, F.cross_entropy(logits, labels))
    assert CLASSIFICATION.correct(logits, labels) == int((logits.argmax(-1) == labels).sum())
    with pytest.raises(ValueError, match="labels"):
        CLASSIFICATION.loss(logits, tail=ClassificationTail(8, 4))


def test_retrieval_loss_is_clip_over_the_batch_with_the_tails_scale():
    torch.manual_seed(0)
    tail = RetrievalTail(8, 16, ("image", "text"), temperature=0.05)
    emb = F.normalize(torch.randn(5, 2, 16), dim=-1)
    loss = RETRIEVAL.loss(emb, tail=tail)
    assert torch.equal(loss, contrastive_loss(emb, tail.logit_scale))
    # Every other sample is a negative: the loss of the whole batch is not the mean of
    # the losses of its halves.
    halves = (RETRIEVAL.loss(emb[:2], tail=tail) * 2 + RETRIEVAL.loss(emb[2:], tail=tail) * 3) / 5
    assert not torch.allclose(loss, halves)
    assert RETRIEVAL.correct(emb, torch.arange(5)) == 0
    with pytest.raises(ValueError, match="tail"):
        RETRIEVAL.loss(emb, labels=torch.arange(5))


def test_test_metrics_and_headline():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, 1])
    metrics = CLASSIFICATION.metrics(logits, labels)
    assert metrics == {
        "accuracy": 2 / 3,
        "loss": float(F.cross_entropy(logits, labels)),
    }
    assert CLASSIFICATION.headline == "test-" + "accuracy"

    emb = F.normalize(torch.eye(4)[:, None, :].repeat(1, 2, 1), dim=-1)
    metrics = RETRIEVAL.metrics(emb, torch.arange(4))
    assert metrics == recall_at_k(emb, torch.arange(4))
    assert metrics["rsum"] == 6.0
    assert RETRIEVAL.headline == "test-rsum" and RETRIEVAL.headline[5:] in metrics


def test_where_labels_live_and_what_is_reported():
    assert CLASSIFICATION.labels_on_client and not RETRIEVAL.labels_on_client
    assert CLASSIFICATION.reports_train_accuracy and not RETRIEVAL.reports_train_accuracy
    assert RETRIEVAL.labels_are_pair_ids and not CLASSIFICATION.labels_are_pair_ids


def test_table_columns_are_the_console_columns_of_each_task():
    tail = ("mb-up-per-client", "mb-down-per-client", "epoch-time-s", "wall-time-s")
    assert CLASSIFICATION.table_columns == ("epoch", "train-loss", "test-accuracy", *tail)
    assert RETRIEVAL.table_columns == (
        "epoch",
        "train-loss",
        "test-i2t-r1",
        "test-t2i-r1",
        "test-rsum",
        *tail,
    )


def test_fusion_and_tail_follow_the_task():
    assert CLASSIFICATION.fusion("auto") == "early"
    assert CLASSIFICATION.fusion("late") == "late"
    assert RETRIEVAL.fusion("auto") == "late"
    with pytest.raises(ValueError, match="fusion=late"):
        RETRIEVAL.fusion("early")
    assert isinstance(CLASSIFICATION.make_tail(8, 3, 0.07), ClassificationTail)
    assert isinstance(RETRIEVAL.make_tail(8, 0, 0.07), RetrievalTail)
