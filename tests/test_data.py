"""Built-in data, tokenizer, fbank, partitioning and batch order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsl_flwr.data import synthetic
from mpsl_flwr.data.audio import fbank
from mpsl_flwr.data.partition import batch_indices, dirichlet_partitions
from mpsl_flwr.data.registry import client_partition, dataset_info, load_split
from mpsl_flwr.data.text import tokenize


def _spec(task, size=64, seed=0, split="train"):
    return synthetic.SyntheticSpec(task, size, seed, split, 0.3)


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_generation_is_deterministic_and_seeded(task):
    a, b = synthetic.generate(_spec(task)), synthetic.generate(_spec(task))
    c = synthetic.generate(_spec(task, seed=1))
    for name in a.info.modalities:
        assert torch.equal(a.arrays[name], b.arrays[name])
        assert not torch.equal(a.arrays[name], c.arrays[name])
    assert np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_batches_follow_the_sample_contract(task):
    ds = synthetic.generate(_spec(task))
    batch = ds.batch([3, 1, 2])
    info = ds.info
    assert set(batch) == {*info.modalities, "label"}
    if "image" in batch:
        assert batch["image"].shape == (3, 3, 64, 64) and batch["image"].dtype == torch.float32
        assert float(batch["image"].min()) >= -1.0 and float(batch["image"].max()) <= 1.0
    if "audio" in batch:
        assert batch["audio"].shape == (3, 48, 128) and batch["audio"].dtype == torch.float32
    if "text" in batch:
        assert batch["text"].dtype == torch.int64 and batch["text"].shape == (3, info.text_length)
    assert batch["label"].dtype == torch.int64
    if info.kind == "classification":
        assert set(np.unique(ds.labels)) <= set(range(info.num_classes))
    else:
        assert torch.equal(batch["label"], torch.tensor([3, 1, 2]))  # pair ids


def test_train_and_test_splits_differ():
    train = synthetic.generate(_spec("synthetic-vqa", split="train"))
    test = synthetic.generate(_spec("synthetic-vqa", split="test"))
    assert not torch.equal(train.arrays["image"], test.arrays["image"])


def test_tokenizer_is_clip_bpe_offline():
    ids = tokenize(["what color is it?"], 8)
    assert ids[0, 0] == 49406 and 49407 in ids[0].tolist()
    assert ids.shape == (1, 8) and ids.dtype == torch.int64
    with pytest.raises(TypeError, match="list of strings"):
        tokenize("one string", 8)


def test_too_long_text_is_an_error_not_a_silent_truncation():
    with pytest.raises(ValueError, match="raise 'text-length'"):
        synthetic.generate(
            synthetic.SyntheticSpec("synthetic-vqa", 8, 0, "train", 0.3, text_length=6)
        )


def test_fbank_shape_padding_and_errors():
    wave = np.random.default_rng(0).normal(size=8000)  # 0.5 s
    feats = fbank(wave, frames=100)
    assert feats.shape == (100, 128)
    assert torch.all(feats[60:] == feats[-1])  # zero padding after ~48 frames, normalised
    with pytest.raises(ValueError, match="mono"):
        fbank(np.zeros((2, 100)), frames=10)


def test_dirichlet_partitions_cover_train_once_and_are_skewed():
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet_partitions(labels, 10, 0.1, seed=0, min_partition_size=2)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(1000))
    # Skew: with alpha=0.1 most partitions hold few classes; with a huge alpha, all ten.
    skewed = np.mean([len(np.unique(labels[p])) for p in parts])
    flat = dirichlet_partitions(labels, 10, 1000.0, seed=0, min_partition_size=2)
    assert skewed < 6 < np.mean([len(np.unique(labels[p])) for p in flat])
    assert [len(p) for p in parts] == [len(p) for p in dirichlet_partitions(labels, 10, 0.1, 0, 2)]


def test_partitioning_errors_say_what_to_change():
    with pytest.raises(ValueError, match="use more data or fewer clients"):
        dirichlet_partitions(np.zeros(10, int), 8, 0.1, seed=0, min_partition_size=2)


def test_client_partitions_come_from_the_train_split_only(tiny):
    cfg = tiny(synthetic_train_size=200, synthetic_test_size=50)
    parts = [client_partition(cfg.data, c, 4, seed=cfg.seed) for c in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    assert len(load_split(cfg.data, "test")) == 50
    with pytest.raises(ValueError, match="outside"):
        client_partition(cfg.data, 4, 4, seed=cfg.seed)


def test_batch_order_is_a_seeded_permutation_per_epoch():
    n, b = 23, 5
    epoch0 = np.concatenate([batch_indices(n, 0, 7, off, b) for off in range(0, n, b)])
    assert sorted(epoch0.tolist()) == list(range(n))
    assert np.array_equal(
        epoch0, np.concatenate([batch_indices(n, 0, 7, o, b) for o in range(0, n, b)])
    )
    assert not np.array_equal(
        epoch0, np.concatenate([batch_indices(n, 1, 7, o, b) for o in range(0, n, b)])
    )
    assert len(batch_indices(n, 0, 7, 20, b)) == 3 and len(batch_indices(n, 0, 7, 25, b)) == 0


def test_unknown_dataset_lists_the_choices(tiny):
    with pytest.raises(ValueError, match="synthetic-vqa, synthetic-va"):
        dataset_info(tiny(dataset="cifar").data)
