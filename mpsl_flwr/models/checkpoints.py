"""Load pretrained encoder weights from local files (never from a hub).

Two layouts are understood:

* **Meta-Transformer** encoder checkpoints (``Meta-Transformer_base_patch16_encoder.pth``):
  the state dict of ``nn.Sequential(*[timm Block ...])``, keys ``0.norm1.weight``, ...
* **timm** ViT checkpoints (``.pth``/``.bin``/``.safetensors`` of ``VisionTransformer``):
  keys ``blocks.0.norm1.weight``, ``norm.*``, ``patch_embed.proj.*``, ``cls_token``,
  ``pos_embed``. The image tokenizer takes the patch embedding, CLS token and (resampled)
  position embedding; the classifier head is not used.

Checkpoints wrapped in ``{"model": ...}``, ``{"state_dict": ...}`` or saved from
``DataParallel`` (``module.`` prefix) are unwrapped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor

from mpsl_flwr.models.head import ClientHead, ImageTokenizer
from mpsl_flwr.models.server import ServerModel

_BLOCK = re.compile(r"^(?P<prefix>.*?)(?P<idx>\d+)\.(?P<rest>(norm1|attn|ls1|mlp|norm2|ls2)\..*)$")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a local checkpoint file, unwrapped from common containers."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Pretrained checkpoint '{path}' does not exist. Set run-config 'pretrained' to "
            'a local .pth/.bin/.safetensors file (nothing is downloaded), or to "" for '
            "random initialisation."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: object = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"Could not read checkpoint '{path}': {err}") from err
    for key in ("model", "state_dict", "module", "encoder"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"'{path}' does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def detect_format(sd: dict[str, Tensor]) -> str:
    """``"timm"`` or ``"meta-transformer"``, from the key names."""
    if any(k.startswith("blocks.") for k in sd):
        return "timm"
    if any(_BLOCK.match(k) for k in sd):
        return "meta-transformer"
    raise ValueError(
        "Checkpoint has neither timm keys ('blocks.0.norm1.weight') nor Meta-Transformer "
        f"keys ('0.norm1.weight'); first keys: {list(sd)[:5]}."
    )


def load_pretrained(path: str | Path, fmt: str, head: ClientHead, server: ServerModel) -> dict:
    """Copy encoder (and, for timm, image tokenizer) weights into ``head`` and ``server``.

    Returns a short report: format, blocks loaded, and which head tensors were loaded.
    """
    sd = read_state_dict(path)
    fmt = detect_format(sd) if fmt == "auto" else fmt
    blocks: dict[int, dict[str, Tensor]] = {}
    others: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = _BLOCK.match(key)
        if m and (fmt == "meta-transformer" or m["prefix"] == "blocks."):
            blocks.setdefault(int(m["idx"]), {})[m["rest"]] = value
        else:
            others[key] = value
    encoder = server.encoder
    width = encoder.norm.normalized_shape[0]
    if not blocks:
        raise ValueError(f"No transformer blocks found in '{path}' ({fmt} layout).")
    ckpt_width = next(iter(blocks[min(blocks)].values())).shape[-1]
    if ckpt_width != width:
        raise ValueError(
            f"Checkpoint '{path}' has width {ckpt_width}; the model has width {width}. "
            "Choose the matching 'model-size' (tiny 192, small 384, base 768, large 1024, "
            "huge 1280)."
        )
    if len(blocks) != len(encoder.blocks):
        raise ValueError(
            f"Checkpoint '{path}' has {len(blocks)} blocks; the encoder has "
            f"{len(encoder.blocks)}. Set 'encoder-depth' to {len(blocks)} (or 0 for the size's "
            "default depth)."
        )
    for idx, block_sd in blocks.items():
        encoder.blocks[idx].load_state_dict(block_sd, strict=True)
    loaded_head = []
    if fmt == "timm":
        if "norm.weight" in others:
            encoder.norm.load_state_dict(
                {"weight": others["norm.weight"], "bias": others["norm.bias"]}
            )
        if "image" in head.tokenizers and "patch_embed.proj.weight" in others:
            loaded_head = _load_image_tokenizer(head, others)
    return {"format": fmt, "blocks": len(blocks), "head": loaded_head}


def _load_image_tokenizer(head: ClientHead, sd: dict[str, Tensor]) -> list[str]:
    tok = head.tokenizers["image"]
    if not isinstance(tok, ImageTokenizer):
        raise TypeError(f"a timm image tokenizer loads into an ImageTokenizer, not {type(tok)}.")
    with torch.no_grad():
        proj = tok.patch_embed.proj
        assert proj.bias is not None  # ImageTokenizer builds its PatchEmbed with a bias
        proj.weight.copy_(sd["patch_embed.proj.weight"])
        proj.bias.copy_(sd["patch_embed.proj.bias"])
        loaded = ["patch_embed"]
        if "cls_token" in sd:
            tok.cls_token.copy_(sd["cls_token"])
            loaded.append("cls_token")
        if "pos_embed" in sd:
            grid = tok.patch_embed.grid_size
            tok.pos_embed.copy_(resample_abs_pos_embed(sd["pos_embed"], list(grid)))
            loaded.append("pos_embed")
    return loaded
