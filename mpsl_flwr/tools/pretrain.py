"""``mpsl-pretrain``: contrastive image-text pre-training of the encoder, for ``pretrained=``.

Centralized training (``strategies.centralized``, the same loop, optimiser and schedule)
with the CLIP objective (symmetric InfoNCE) of ``synthetic-retrieval``, on that task's
``pretrain`` split: samples from a random stream of their own, so that no fine-tuning
sample of any built-in task is one the encoder saw. It writes an mpsl checkpoint (the
image and text tokenizers, the pre-LayerNorm and every encoder block; the retrieval
tail is dropped) and a JSON of its loss history beside it. Fine-tuning then loads it
with ``--run-config "pretrained='<path>'"``; a model with an audio tokenizer also needs
``pretrained-allow-random=true``, since pre-training never saw audio.

    mpsl-pretrain --run-config "model-size='tiny' encoder-depth=12 epochs=4" \\
        --out outputs/pretrained/tiny-vt.pt
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpsl_flwr.config import ConfigError, RunConfig, resolve_config
from mpsl_flwr.data.base import MultimodalDataset
from mpsl_flwr.data.registry import load_split
from mpsl_flwr.data.synthetic import DEFAULT_IMAGE_NORM
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.checkpoints import save_mpsl
from mpsl_flwr.preflight import check_pretrained
from mpsl_flwr.records import EpochRecord
from strategies.centralized import Centralized
from strategies.runner import setup_logging

TASK = "synthetic-retrieval"
SPLIT = "pretrain"
# Run-config keys that pre-training fixes, with the value it needs.
FIXED: dict[str, Any] = {"dataset": TASK, "strategy": "centralized", "finetune-blocks": -1}


class PretrainExperiment(Experiment):
    """A centralized run whose training split is the task's ``pretrain`` split."""

    def train_set(self) -> MultimodalDataset:
        return load_split(self.cfg.data, SPLIT)


def pretrain_config(overrides: Mapping[str, Any]) -> RunConfig:
    """The run config of a pre-training: ``pyproject.toml`` and ``overrides``, with the
    keys of :data:`FIXED` set (a different value asked for fails, naming the key)."""
    for key, value in FIXED.items():
        if key in overrides and overrides[key] != value:
            raise ConfigError(
                f"mpsl-pretrain fixes run-config key '{key}' to {value!r}; got "
                f"{overrides[key]!r}. Fix: drop '{key}' from --run-config."
            )
    return resolve_config({**overrides, **FIXED})


def pretrain(cfg: RunConfig, out: Path) -> dict[str, Any]:
    """Pre-train as ``cfg`` says; write the checkpoint to ``out`` and its loss history to
    ``out`` with suffix ``.json``; returns the checkpoint's metadata."""
    check_pretrained(cfg)  # continuing from an earlier checkpoint is allowed
    exp = PretrainExperiment.from_config(cfg)
    history: list[dict[str, Any]] = []

    def on_epoch_end(record: EpochRecord) -> None:  # the runner logs the epoch itself
        history.append({"epoch": record.epoch, "train-loss": float(record.train_loss)})

    runner = Centralized(exp)
    runner.start(on_epoch_end=on_epoch_end)
    meta = {
        "model-size": cfg.model_size,
        "train-token-embedding": cfg.train_token_embedding,
        "image-norm": DEFAULT_IMAGE_NORM if cfg.image_norm == "auto" else cfg.image_norm,
        "task": TASK,
        "split": SPLIT,
        "data-seed": cfg.data_seed,
        "seed": cfg.seed,
        "samples": cfg.synthetic_train_size,
        "epochs": cfg.epochs,
        "objective": "clip-infonce",
    }
    meta = save_mpsl(out, runner.head.cpu(), runner.server_model.cpu(), meta)
    _write_json(out.with_suffix(".json"), {**meta, "history": history})
    return meta


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as JSON at ``path``, atomically (a temporary file, then ``os.replace``)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run(overrides: Mapping[str, Any], out: Path) -> int:
    """``mpsl-pretrain``: pre-train, write, and say how to use the checkpoint."""
    setup_logging()
    meta = pretrain(pretrain_config(overrides), out)
    print(
        f"Wrote {out} (loss history: {out.with_suffix('.json')}). Fine-tune from it with "
        f"--run-config \"pretrained='{out}' text-length={meta['text-length']}\" (add "
        "pretrained-allow-random=true for audio)."
    )
    return 0
