"""Each built-in classification task needs both of its modalities.

A probe (a small MLP on cheap, generic features: 8x8 pooled pixels, pooled fbank, a
bag of subword tokens) is trained on one modality and on both. The one-modality
probes must stay below 60% of the accuracy the calibrated tasks promise (0.85), and
below the two-modality probe, on the held-out split.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpsl_flwr.config import RunConfig
from mpsl_flwr.data import synthetic

TRAIN, TEST = 1500, 500
DIFFICULTY = RunConfig.synthetic_difficulty  # the default run's
# The calibration's bound: the best one-modality probe stays within 60% of what the
# centralized model reaches, taken at the least it may reach (0.85; README, "Built-in
# tasks"). Each task leaves one modality two answers open, so 0.5 is its ceiling.
PROBE_CEILING = 0.6 * 0.85


@pytest.fixture(autouse=True)
def one_thread():
    """Train the probes on one thread. Their matmuls are small (a batch of 100, width
    512), so with two threads the synchronisation costs more than the arithmetic: on
    the 2-core reference machine, under load, a probe took 33 s on two threads and 5 s
    on one, for the same probe. What the test asserts does not change."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _features(ds, vocab: np.ndarray) -> dict[str, torch.Tensor]:
    out = {}
    if "image" in ds.arrays:
        pixels = ds.arrays["image"].float().permute(0, 3, 1, 2) / 255.0
        out["image"] = F.adaptive_avg_pool2d(pixels, 8).flatten(1)
    if "audio" in ds.arrays:
        out["audio"] = F.adaptive_avg_pool2d(
            ds.arrays["audio"].float().unsqueeze(1), (12, 16)
        ).flatten(1)
    if "text" in ds.arrays:
        ids = torch.as_tensor(np.searchsorted(vocab, ds.arrays["text"].numpy()))
        out["text"] = torch.zeros(len(ids), len(vocab)).scatter_(1, ids, 1.0)
    return out


def _probe_accuracy(x_train, y_train, x_test, y_test, classes: int) -> float:
    torch.manual_seed(0)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    model = torch.nn.Sequential(
        torch.nn.Linear(x_train.shape[1], 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, classes),
    )
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.05)
    for _ in range(60):
        perm = torch.randperm(len(x_train))
        for start in range(0, len(x_train), 100):
            idx = perm[start : start + 100]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((model(x_test).argmax(1) == y_test).float().mean())


@pytest.mark.parametrize("task", ["synthetic-vqa", "synthetic-va", "synthetic-at"])
def test_one_modality_stays_well_below_both(task):
    train = synthetic.generate(synthetic.SyntheticSpec(task, TRAIN, 0, "train", DIFFICULTY))
    test = synthetic.generate(synthetic.SyntheticSpec(task, TEST, 0, "test", DIFFICULTY))
    texts = [d.arrays["text"].flatten() for d in (train, test) if "text" in d.arrays]
    vocab = np.unique(torch.cat(texts).numpy()) if texts else np.zeros(1, dtype=np.int64)
    f_train, f_test = _features(train, vocab), _features(test, vocab)
    y_train, y_test = torch.as_tensor(train.labels), torch.as_tensor(test.labels)
    first, second = train.info.modalities
    acc = {}
    for name, mods in ((first, [first]), (second, [second]), ("both", [first, second])):
        acc[name] = _probe_accuracy(
            torch.cat([f_train[m] for m in mods], 1),
            y_train,
            torch.cat([f_test[m] for m in mods], 1),
            y_test,
            train.info.num_classes,
        )
    print(task, acc)
    assert max(acc[first], acc[second]) <= PROBE_CEILING, acc
    assert acc["both"] > max(acc[first], acc[second]) + 0.1, acc
