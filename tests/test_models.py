"""The three-part model: shapes, fusion, freezing, split initialisation, checkpoints."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import Block

from mpsl_flwr.data.registry import dataset_info
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.checkpoints import load_pretrained
from mpsl_flwr.models.split_model import (
    ModelSpec,
    build_head,
    build_model,
    build_server,
    count_trainable,
)
from mpsl_flwr.registry import strategy_spec


def spec_for(cfg, info):
    """The spec ``Experiment.from_config`` builds for ``cfg`` and ``info``."""
    options = strategy_spec(cfg.strategy).model(cfg)
    return ModelSpec.from_config(cfg.model, info, options=options, seed=cfg.seed)


def _batch(info, b=3):
    out = {}
    if "image" in info.modalities:
        out["image"] = torch.randn(b, 3, info.image_size, info.image_size)
    if "audio" in info.modalities:
        out["audio"] = torch.randn(b, info.audio_frames, 128)
    if "text" in info.modalities:
        out["text"] = torch.randint(0, 49408, (b, info.text_length))
    return out


@pytest.mark.parametrize(
    ("dataset", "fusion", "streams", "tokens"),
    [
        ("synthetic-vqa", "early", ("fused",), {"fused": 17 + 16}),
        ("synthetic-vqa", "late", ("image", "text"), {"image": 17, "text": 16}),
        ("synthetic-va", "early", ("fused",), {"fused": 17 + 1 + 12 * 4}),
        ("synthetic-at", "late", ("audio", "text"), {"audio": 49, "text": 12}),
    ],
)
def test_head_streams_and_token_counts(tiny, dataset, fusion, streams, tokens):
    cfg = tiny(dataset=dataset, fusion=fusion)
    spec = spec_for(cfg, dataset_info(cfg.data))
    head, server = build_head(spec), build_server(spec)
    acts = head(_batch(dataset_info(cfg.data)))
    assert tuple(acts) == streams == server.streams
    for name, n in tokens.items():
        assert acts[name].shape == (3, n, 192)
    logits = server(acts)
    assert logits.shape == (3, dataset_info(cfg.data).num_classes)


def test_retrieval_outputs_normalised_pairs(tiny):
    cfg = tiny(dataset="synthetic-retrieval")
    spec = spec_for(cfg, dataset_info(cfg.data))
    assert not spec.early_fusion
    out = build_model(spec)(_batch(dataset_info(cfg.data)))
    assert out.shape == (3, 2, 256)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, 2))
    with pytest.raises(ValueError, match="fusion=late"):
        spec_for(tiny(dataset="synthetic-retrieval", fusion="early"), dataset_info(cfg.data))


def test_wrong_input_shape_names_the_fix(tiny):
    cfg = tiny()
    head = build_head(spec_for(cfg, dataset_info(cfg.data)))
    batch = _batch(dataset_info(cfg.data))
    batch["image"] = torch.randn(3, 3, 32, 32)
    with pytest.raises(
        ValueError, match=r"image batch must have shape \[B, 3, 64, 64\].*image-size"
    ):
        head(batch)
    del batch["image"]
    with pytest.raises(KeyError, match="lacks modality"):
        head(batch)


def test_split_built_apart_equals_built_together(tiny):
    cfg = tiny()
    spec = spec_for(cfg, dataset_info(cfg.data))
    whole = build_model(spec).state_dict()
    apart = {
        **{f"head.{k}": v for k, v in build_head(spec).state_dict().items()},
        **{f"server.{k}": v for k, v in build_server(spec).state_dict().items()},
    }
    assert whole.keys() == apart.keys()
    for k in whole:
        torch.testing.assert_close(whole[k], apart[k], rtol=0, atol=0)


def test_only_last_k_blocks_train(tiny):
    cfg = tiny(encoder_depth=4, finetune_blocks=1)
    server = build_server(spec_for(cfg, dataset_info(cfg.data)))
    trainable = [any(p.requires_grad for p in b.parameters()) for b in server.encoder.blocks]
    assert trainable == [False, False, False, True]
    frozen_all = build_server(
        spec_for(tiny(encoder_depth=4, finetune_blocks=0), dataset_info(cfg.data))
    )
    assert count_trainable(frozen_all.encoder) == 0
    assert count_trainable(frozen_all.tail) > 0


def test_text_token_embedding_is_frozen_unless_asked(tiny):
    cfg = tiny()
    head = build_head(spec_for(cfg, dataset_info(cfg.data)))
    assert not head.tokenizers["text"].token_embedding.weight.requires_grad
    cfg = tiny(train_token_embedding=True)
    head = build_head(spec_for(cfg, dataset_info(cfg.data)))
    assert head.tokenizers["text"].token_embedding.weight.requires_grad


def test_timm_checkpoint_loads_blocks_norm_and_image_tokenizer(tiny, tmp_path):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    path = tmp_path / "vit.pth"
    torch.save({"model": vit.state_dict()}, path)
    cfg = tiny(pretrained=str(path), pretrained_allow_random=True, final_norm=True)
    head, server = Experiment.from_config(cfg).initial_model()
    torch.testing.assert_close(
        server.encoder.blocks[1].attn.qkv.weight, vit.blocks[1].attn.qkv.weight
    )
    torch.testing.assert_close(server.encoder.norm.weight, vit.norm.weight)
    tok = head.tokenizers["image"]
    torch.testing.assert_close(tok.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    assert tok.pos_embed.shape == (1, 1 + 16, 192)  # 224 grid resampled to the 64x64 grid


def test_meta_transformer_checkpoint_loads_blocks(tiny, tmp_path):
    encoder = torch.nn.Sequential(*[Block(192, 3, 4.0, qkv_bias=True) for _ in range(2)])
    path = tmp_path / "Meta-Transformer_tiny_encoder.pth"
    torch.save({f"module.{k}": v for k, v in encoder.state_dict().items()}, path)
    cfg = tiny(pretrained=str(path), pretrained_allow_random=True)
    head, server = Experiment.from_config(cfg).initial_model()
    torch.testing.assert_close(server.encoder.blocks[0].mlp.fc1.weight, encoder[0].mlp.fc1.weight)
    report = load_pretrained(path, "auto", head, server, allow_random=True)
    assert report["format"] == "meta-transformer" and report["blocks"] == 2
    assert report["head"] == [] and report["unused"] == []
    assert report["random"] == [f"head.{k}" for k in head.state_dict()]  # no classifier here


def test_checkpoint_errors_name_the_fix(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        Experiment.from_config(tiny(pretrained=str(tmp_path / "missing.pth"))).initial_model()
    wide = torch.nn.Sequential(*[Block(384, 6, 4.0, qkv_bias=True) for _ in range(2)])
    torch.save(wide.state_dict(), tmp_path / "small.pth")
    with pytest.raises(ValueError, match=r"width 384.*model-size"):
        Experiment.from_config(tiny(pretrained=str(tmp_path / "small.pth"))).initial_model()
    deep = torch.nn.Sequential(*[Block(192, 3, 4.0, qkv_bias=True) for _ in range(3)])
    torch.save(deep.state_dict(), tmp_path / "deep.pth")
    with pytest.raises(ValueError, match=r"3 blocks.*encoder-depth"):
        Experiment.from_config(tiny(pretrained=str(tmp_path / "deep.pth"))).initial_model()
