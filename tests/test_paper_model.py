"""The authors' architecture (Meta-Transformer base, as released), rebuilt by hand.

The forward below is the paper's model written out in plain torch and timm ``Block``s
built as the authors build them (``nn.LayerNorm``, eps 1e-5), with the project's weights
copied in through ``state_dict``. The project's model must compute exactly the same
numbers (``torch.equal``): patch convolutions without bias, the pre-LayerNorm, the
blocks, no final LayerNorm, and a read-out at the modality tokens only (the CLS of image
and audio, the first token of the text). The old read-out (mean over all tokens) and
final norm stay reachable by ``readout=all-tokens`` and ``final-norm=true``.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from mpsl_flwr.data.registry import dataset_info
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.head import AUDIO_STRIDE, ClientHead
from mpsl_flwr.models.server import ServerModel
from mpsl_flwr.models.split_model import ModelSpec, build_head, build_server
from mpsl_flwr.registry import strategy_spec

HEADS = 3  # ViT-Ti


def _model(cfg) -> tuple[ModelSpec, ClientHead, ServerModel]:
    """Head and server of ``cfg`` with every tensor redrawn at random, so that no
    LayerNorm is the identity and no bias zero: each one must matter to the output."""
    spec = ModelSpec.from_config(
        cfg.model,
        dataset_info(cfg.data),
        options=strategy_spec(cfg.strategy).model(cfg),
        seed=cfg.seed,
    )
    head, server = build_head(spec), build_server(spec)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in (head, server):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return spec, head, server


def _batch(info, b: int = 3) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(1)
    out: dict[str, Tensor] = {}
    if "image" in info.modalities:
        out["image"] = torch.randn(b, 3, info.image_size, info.image_size, generator=gen)
    if "audio" in info.modalities:
        out["audio"] = torch.randn(b, info.audio_frames, 128, generator=gen)
    if "text" in info.modalities:
        out["text"] = torch.randint(0, 49408, (b, info.text_length), generator=gen)
    return out


def _paper_tokens(sd: dict[str, Tensor], modality: str, x: Tensor) -> Tensor:
    """One modality's tokens as the authors make them (no conv bias), pre-LayerNorm'ed."""
    p = f"tokenizers.{modality}."
    if modality == "text":
        t = F.embedding(x, sd[p + "token_embedding.weight"])
    else:
        if modality == "image":
            t = F.conv2d(x, sd[p + "patch_embed.proj.weight"], stride=16)
        else:  # [B, T, 128] fbank -> [B, 1, 128, T], AST's patches
            t = F.conv2d(x.transpose(1, 2).unsqueeze(1), sd[p + "proj.weight"], stride=AUDIO_STRIDE)
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([sd[p + "cls_token"].expand(len(x), -1, -1), t], dim=1)
    t = t + sd[p + "pos_embed"]
    return F.layer_norm(t, t.shape[-1:], sd["pre_norm.weight"], sd["pre_norm.bias"], eps=1e-5)


def _paper_blocks(server: ServerModel) -> nn.Sequential:
    """The authors' encoder: timm Blocks with ``nn.LayerNorm`` (eps 1e-5), no final norm."""
    blocks = nn.Sequential(
        *[Block(192, HEADS, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in server.encoder.blocks]
    )
    blocks.load_state_dict(server.encoder.blocks.state_dict())
    return blocks


def paper_forward(
    head: ClientHead,
    server: ServerModel,
    batch: dict[str, Tensor],
    *,
    early: bool,
    old: bool = False,
) -> Tensor:
    """The model's output, by hand. ``old``: the project's previous read-out (mean over
    all tokens of the fused sequence and of the text; a final LayerNorm on every token)."""
    hsd, ssd = head.state_dict(), server.state_dict()
    blocks = _paper_blocks(server)
    tokens = {m: _paper_tokens(hsd, m, batch[m]) for m in head.modalities}

    def encode(x: Tensor) -> Tensor:
        out = blocks(x)
        if old:
            out = F.layer_norm(
                out, out.shape[-1:], ssd["encoder.norm.weight"], ssd["encoder.norm.bias"]
            )
        return out

    if early:
        out = encode(torch.cat(list(tokens.values()), dim=1))
        starts = torch.tensor([0, *(t.shape[1] for t in tokens.values())]).cumsum(0)[:-1]
        pooled = out.mean(1) if old else torch.stack([out[:, int(s)] for s in starts]).mean(0)
        readouts = {"fused": pooled}
    else:
        readouts = {}
        for m, t in tokens.items():
            out = encode(t)
            readouts[m] = out.mean(1) if old and m == "text" else out[:, 0]
    if "tail.proj.image.weight" in ssd:  # retrieval: per-modality projections, L2-normalised
        return torch.stack(
            [
                F.normalize(F.linear(readouts[m], ssd[f"tail.proj.{m}.weight"]), dim=-1)
                for m in readouts
            ],
            dim=1,
        )
    pooled = torch.stack(list(readouts.values())).mean(0)
    return F.linear(pooled, ssd["tail.fc.weight"], ssd["tail.fc.bias"])


PAIRS = ["synthetic-vqa", "synthetic-va", "synthetic-at"]


@pytest.mark.parametrize("fusion", ["early", "late"])
@pytest.mark.parametrize("dataset", PAIRS)
def test_project_forward_is_the_papers_exactly(tiny, dataset, fusion):
    cfg = tiny(dataset=dataset, fusion=fusion)
    _, head, server = _model(cfg)
    batch = _batch(dataset_info(cfg.data))
    with torch.no_grad():
        ours = server(head(batch))
        theirs = paper_forward(head, server, batch, early=fusion == "early")
    assert torch.equal(ours, theirs)


def test_retrieval_late_fusion_is_the_papers_exactly(tiny):
    cfg = tiny(dataset="synthetic-retrieval")
    _, head, server = _model(cfg)
    batch = _batch(dataset_info(cfg.data))
    with torch.no_grad():
        assert torch.equal(server(head(batch)), paper_forward(head, server, batch, early=False))


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_old_readout_and_final_norm_are_reachable(tiny, fusion):
    cfg = tiny(fusion=fusion, readout="all-tokens", final_norm=True)
    _, head, server = _model(cfg)
    batch = _batch(dataset_info(cfg.data))
    with torch.no_grad():
        ours = server(head(batch))
        assert torch.equal(
            ours, paper_forward(head, server, batch, early=fusion == "early", old=True)
        )
        assert not torch.equal(ours, paper_forward(head, server, batch, early=fusion == "early"))


def test_each_key_alone_changes_the_forward(tiny):
    """``readout`` and ``final-norm`` are independent: each one alone changes the output."""
    batch = _batch(dataset_info(tiny().data))
    outs = {}
    for readout in ("modality-tokens", "all-tokens"):
        for final_norm in (False, True):
            _, head, server = _model(tiny(readout=readout, final_norm=final_norm))
            with torch.no_grad():
                outs[readout, final_norm] = server(head(batch))
    values = list(outs.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1 :])


def test_paper_defaults_have_no_final_norm_and_no_patch_bias(tiny):
    _, head, server = _model(tiny(dataset="synthetic-va"))  # image and audio tokenizers
    assert not any(k.startswith("encoder.norm.") for k in server.state_dict())
    assert head.tokenizers["image"].patch_embed.proj.bias is None
    assert head.tokenizers["audio"].proj.bias is None
    norms = [m for m in server.encoder.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(type(m) is nn.LayerNorm and m.eps == 1e-5 for m in norms)


@pytest.mark.parametrize("dataset", PAIRS)
def test_readout_positions_are_where_the_head_puts_each_first_token(tiny, dataset):
    """Each early-fusion read-out position holds, in the head's own fused output, the
    first token (CLS, or first text token) of one modality, in the head's order."""
    cfg = tiny(dataset=dataset, fusion="early")
    _, head, server = _model(cfg)
    batch = _batch(dataset_info(cfg.data))
    positions = server.readout.positions["fused"]
    assert positions is not None and len(positions) == len(head.modalities)
    with torch.no_grad():
        fused = head(batch)["fused"]
        for m, pos in zip(head.modalities, positions, strict=True):
            first = head.pre_norm(head.tokenizers[m](batch[m]))[:, 0]
            assert torch.equal(fused[:, pos], first)


def test_bad_readout_fails_up_front_naming_the_fix(tiny):
    from mpsl_flwr.config import ConfigError

    with pytest.raises(ConfigError, match=r"'readout'.*modality-tokens.*all-tokens.*'all-token'"):
        tiny(readout="all-token")
    with pytest.raises(ConfigError, match=r"'final-norm' expects a bool.*final-norm=true"):
        tiny(final_norm="yes")
    with pytest.raises(ConfigError, match=r"'pretrained-allow-random' expects a bool"):
        tiny(pretrained_allow_random=1)


# --- pretrained checkpoints: what stays random must be named, and allowed ------------------


def _meta_transformer_file(tmp_path) -> str:
    encoder = nn.Sequential(
        *[Block(192, HEADS, 4.0, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(2)]
    )
    path = tmp_path / "Meta-Transformer_tiny_encoder.pth"
    torch.save(encoder.state_dict(), path)
    return str(path)


def _timm_file(tmp_path) -> tuple[str, nn.Module]:
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    return str(path), vit


def test_meta_transformer_checkpoint_fails_naming_the_random_tokenizers(tiny, tmp_path):
    path = _meta_transformer_file(tmp_path)
    with pytest.raises(ValueError) as err:
        Experiment.from_config(tiny(pretrained=path)).initial_model()
    msg = str(err.value)
    assert "\n" not in msg
    for name in (
        "head.tokenizers.image.patch_embed.proj.weight",
        "head.tokenizers.image.cls_token",
        "head.tokenizers.image.pos_embed",
        "head.tokenizers.text.token_embedding.weight",
        "head.tokenizers.text.pos_embed",
        "head.pre_norm.weight",
    ):
        assert name in msg
    assert path in msg and "pretrained-allow-random=true" in msg
    assert "holds only the encoder blocks" in msg
    assert "server.tail" not in msg and "server.encoder.blocks" not in msg


def test_meta_transformer_checkpoint_loads_with_the_key(tiny, tmp_path):
    path = _meta_transformer_file(tmp_path)
    _, server = Experiment.from_config(
        tiny(pretrained=path, pretrained_allow_random=True)
    ).initial_model()
    blocks = torch.load(path, weights_only=True)
    assert torch.equal(server.encoder.blocks[1].mlp.fc2.weight, blocks["1.mlp.fc2.weight"])


def test_timm_checkpoint_names_what_stays_random(tiny, tmp_path):
    path, _ = _timm_file(tmp_path)
    with pytest.raises(ValueError) as err:
        Experiment.from_config(tiny(pretrained=path)).initial_model()
    msg = str(err.value)
    assert "head.tokenizers.text.token_embedding.weight" in msg
    assert "head.pre_norm.weight" in msg
    assert "head.tokenizers.image" not in msg  # the timm image tokenizer is loaded
    assert "pretrained-allow-random=true" in msg


def test_timm_checkpoint_with_final_norm_on_loads_it(tiny, tmp_path):
    path, vit = _timm_file(tmp_path)
    _, server = Experiment.from_config(
        tiny(pretrained=path, pretrained_allow_random=True, final_norm=True)
    ).initial_model()
    assert torch.equal(server.encoder.norm.weight, vit.norm.weight)


def test_timm_patch_bias_is_folded_into_the_positions(tiny, tmp_path):
    """Our patch convolution has no bias; a timm checkpoint's bias is added to every
    patch token's position instead: the checkpoint's function, the authors' module."""
    path, vit = _timm_file(tmp_path)
    head, _ = Experiment.from_config(
        tiny(pretrained=path, pretrained_allow_random=True)
    ).initial_model()
    images = torch.randn(2, 3, 64, 64)
    pos = resample_abs_pos_embed(vit.pos_embed, [4, 4])
    with torch.no_grad():
        ours = head.tokenizers["image"](images)
        patches = vit.patch_embed.proj(images).flatten(2).transpose(1, 2)  # with its bias
        theirs = torch.cat([vit.cls_token.expand(2, -1, -1), patches], 1) + pos
    torch.testing.assert_close(ours, theirs)


def test_costs_count_the_papers_parameters(tiny):
    """``mpsl-costs`` counts the model as built: no final norm, no patch bias."""
    from mpsl_flwr.costs import measure

    cfg = tiny(encoder_depth=2)
    report = measure(Experiment.from_config(cfg))
    block = Block(192, HEADS, qkv_bias=True, norm_layer=nn.LayerNorm)
    classes = dataset_info(cfg.data).num_classes
    assert report.server_params == 2 * sum(p.numel() for p in block.parameters()) + (
        192 * classes + classes
    )
    info = dataset_info(cfg.data)
    image = 192 * 3 * 16 * 16 + 192 + (1 + (info.image_size // 16) ** 2) * 192  # conv, CLS, pos
    text = info.text_length * 192  # positions; the token table is frozen
    assert report.client_params == image + text + 2 * 192  # + the pre-LayerNorm
