"""``mpsl-pretrain`` (issue 13): contrastive pre-training on samples of their own, written
as an mpsl checkpoint that ``pretrained=`` loads exactly, naming what stays random."""

from __future__ import annotations

import json

import pytest
import torch

from mpsl_flwr import cli
from mpsl_flwr.config import ConfigError
from mpsl_flwr.data import synthetic
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.checkpoints import detect_format, load_pretrained, read_checkpoint
from mpsl_flwr.preflight import check_checkpoint_fits
from mpsl_flwr.tools.pretrain import pretrain_config

SMALL_RUN = (
    "model-size='tiny' encoder-depth=2 image-size=32 synthetic-train-size=32 batch-size=16 "
    "epochs=1 progress=false"
)
# What the fine-tuning runs share with SMALL_RUN (the default text-length of
# synthetic-retrieval's captions is 32).
SHAPE = {"encoder_depth": 2, "image_size": 32, "text_length": 32}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint written by the command, and what the command printed."""
    out = tmp_path_factory.mktemp("pretrain") / "tiny-vt.pt"
    assert cli.pretrain(["--run-config", SMALL_RUN, "--out", str(out)]) == 0
    return out


def test_the_command_writes_checkpoint_metadata_and_history(checkpoint):
    sd, meta = read_checkpoint(checkpoint)
    assert detect_format(sd) == "mpsl"
    assert meta["tokenizers"] == ["image", "text"] and meta["split"] == "pretrain"
    assert (meta["width"], meta["depth"], meta["image-size"], meta["text-length"]) == (
        192,
        2,
        32,
        32,
    )
    history = json.loads(checkpoint.with_suffix(".json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1] and history[0]["train-loss"] > 0
    assert not any(k.startswith(("server.tail.", "head.classifier.")) for k in sd)
    assert not list(checkpoint.parent.glob("*.tmp"))


def test_the_command_says_how_to_use_it(tmp_path, capsys):
    out = tmp_path / "vt.pt"
    run = SMALL_RUN.replace("encoder-depth=2", "encoder-depth=1")
    cli.pretrain(["--run-config", run, "--out", str(out)])
    assert f"--run-config \"pretrained='{out}' text-length=32\"" in capsys.readouterr().out


def test_a_vt_model_loads_every_pretrained_tensor_exactly(checkpoint, tiny):
    sd, _ = read_checkpoint(checkpoint)
    cfg = tiny(dataset="synthetic-vqa", pretrained=str(checkpoint), seed=1, **SHAPE)
    head, server = Experiment.from_config(cfg).initial_model()  # nothing random: no error
    model = {f"head.{k}": v for k, v in head.state_dict().items()}
    model |= {f"server.{k}": v for k, v in server.state_dict().items()}
    assert any(k.startswith("head.tokenizers.image.") for k in sd)
    assert any(k.startswith("server.encoder.blocks.1.") for k in sd)
    for name, value in sd.items():
        assert torch.equal(model[name], value), name


def test_a_va_model_names_only_the_audio_tokenizer_as_random(checkpoint, tiny):
    cfg = tiny(dataset="synthetic-va", pretrained=str(checkpoint), **SHAPE)
    with pytest.raises(ConfigError, match=r"head\.tokenizers\.audio\..*pretrained-allow-random"):
        Experiment.from_config(cfg).initial_model()
    exp = Experiment.from_config(cfg.replace(pretrained_allow_random=True))
    head, server = exp.initial_model()
    report = load_pretrained(checkpoint, "auto", head, server, allow_random=True)
    audio = [f"head.tokenizers.audio.{k}" for k in head.tokenizers["audio"].state_dict()]
    assert report["format"] == "mpsl" and report["random"] == audio
    assert all(k.startswith("head.tokenizers.text.") for k in report["unused"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model_size": "small"},
            "width 192; this model has width 384. Fix: set run-config 'model-size='tiny''",
        ),
        (
            {"encoder_depth": 3},
            "depth 2; this model has depth 3. Fix: set run-config 'encoder-depth=2'",
        ),
        (
            {"image_size": 64},
            "image-size 32; this model has image-size 64. Fix: set run-config 'image-size=32'",
        ),
    ],
)
def test_a_shape_mismatch_fails_in_one_line(checkpoint, tiny, change, message):
    cfg = tiny(dataset="synthetic-vqa", pretrained=str(checkpoint), **{**SHAPE, **change})
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(cfg).initial_model()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_pretraining_fixes_its_task():
    with pytest.raises(ConfigError, match="fixes run-config key 'dataset'"):
        pretrain_config({"dataset": "synthetic-vqa"})
    assert pretrain_config({}).dataset == "synthetic-retrieval"


@pytest.mark.parametrize("data_seed", [0, 1])
def test_pretraining_samples_are_none_of_the_fine_tuning_samples(data_seed):
    def images(task: str, split: str, seed: int) -> set[bytes]:
        spec = synthetic.SyntheticSpec(task, 64, seed, split, 0.3, image_size=32)
        return {img.numpy().tobytes() for img in synthetic.generate(spec).arrays["image"]}

    seen = images("synthetic-retrieval", "pretrain", 0)
    for task in ("synthetic-retrieval", "synthetic-vqa"):
        for split in ("train", "test"):
            assert not seen & images(task, split, data_seed), (task, split)


def test_the_launchers_preflight_reads_it_on_the_meta_device(checkpoint, tiny):
    vt = tiny(dataset="synthetic-vqa", pretrained=str(checkpoint), **SHAPE)
    check_checkpoint_fits(Experiment.from_config(vt))
    va = tiny(dataset="synthetic-va", pretrained=str(checkpoint), **SHAPE)
    with pytest.raises(ConfigError, match=r"head\.tokenizers\.audio\."):
        check_checkpoint_fits(Experiment.from_config(va))
