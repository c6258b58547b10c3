"""Load pretrained encoder weights from local files (never from a hub).

Two layouts are understood:

* **Meta-Transformer** encoder checkpoints (``Meta-Transformer_base_patch16_encoder.pth``):
  the state dict of ``nn.Sequential(*[timm Block ...])``, keys ``0.norm1.weight``, ...
* **timm** ViT checkpoints (``.pth``/``.bin``/``.safetensors`` of ``VisionTransformer``):
  keys ``blocks.0.norm1.weight``, ``norm.*``, ``patch_embed.proj.*``, ``cls_token``,
  ``pos_embed``. The image tokenizer takes the patch embedding, CLS token and (resampled)
  position embedding (the patch bias folded into the positions: our convolution has
  none, as the authors'); ``norm.*`` fills the final norm when ``final-norm=true`` and is
  unused otherwise; ``norm_pre.*`` (CLIP-style ViTs) fills the pre-LayerNorm; the
  classifier head is not used.

What a checkpoint leaves at random initialisation (besides the task tail and adapters)
is named, and fails the load unless ``pretrained-allow-random=true``.

Checkpoints wrapped in ``{"model": ...}``, ``{"state_dict": ...}`` or saved from
``DataParallel`` (``module.`` prefix) are unwrapped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from mpsl_flwr.config import ConfigError
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
            raise ConfigError(f"Could not read checkpoint '{path}': {err}") from err
    for key in ("model", "state_dict", "module", "encoder"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ConfigError(f"'{path}' does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def detect_format(sd: dict[str, Tensor]) -> str:
    """``"timm"`` or ``"meta-transformer"``, from the key names."""
    if any(k.startswith("blocks.") for k in sd):
        return "timm"
    if any(_BLOCK.match(k) for k in sd):
        return "meta-transformer"
    raise ConfigError(
        "Checkpoint has neither timm keys ('blocks.0.norm1.weight') nor Meta-Transformer "
        f"keys ('0.norm1.weight'); first keys: {list(sd)[:5]}."
    )


# Tensors that no encoder checkpoint holds and that every run trains from their random
# start: the task tail (classifier, retrieval projections), the client-side classifier
# and the FedCLIP adapters. Everything else left unloaded is named (see load_pretrained).
EXPECTED_RANDOM = ("head.classifier.", "server.tail.", "server.adapters.")

_HOLDS = {
    "meta-transformer": "A Meta-Transformer encoder checkpoint holds only the encoder blocks, "
    "so the client head's tokenizers and pre-LayerNorm stay random.",
    "timm": "A timm ViT checkpoint holds the encoder blocks, the image tokenizer and a final "
    "norm (used with final-norm=true); other modalities' tokenizers and the pre-LayerNorm "
    "(unless it has norm_pre) stay random.",
}


def load_pretrained(
    path: str | Path,
    fmt: str,
    head: ClientHead,
    server: ServerModel,
    allow_random: bool = False,
) -> dict:
    """Copy encoder (and, for timm, image tokenizer and pre-norm) weights into ``head``
    and ``server``.

    Every tensor of the head and the encoder that the checkpoint does not fill is left
    at random initialisation; unless ``allow_random`` (run-config
    ``pretrained-allow-random``) this raises a one-line ``ConfigError`` (a
    ``ValueError``, printed as one line by every command) naming them,
    since a "pretrained" run that trains half its model from scratch should be chosen,
    not stumbled into. Returns a short report: format, blocks loaded, the head tensors
    loaded, the model tensors left random and the checkpoint tensors not used.
    """
    sd = read_state_dict(path)
    fmt = detect_format(sd) if fmt == "auto" else fmt
    blocks, others = _split_blocks(sd, fmt)
    _check_encoder_shape(path, fmt, blocks, server)
    encoder = server.encoder
    loaded: list[str] = []
    for idx, block_sd in blocks.items():
        encoder.blocks[idx].load_state_dict(block_sd, strict=True)
        loaded += [f"server.encoder.blocks.{idx}.{k}" for k in block_sd]
    used = set(sd) - set(others)
    if fmt == "timm":
        used |= _load_timm_extras(others, head, server, loaded)
    random = left_random(head, server, loaded)
    if random and not allow_random:
        raise ConfigError(
            f"Pretrained checkpoint '{path}' ({fmt}) leaves {len(random)} model tensors at "
            f"random initialisation: {', '.join(random)}. {_HOLDS[fmt]} Fix: set run-config "
            "'pretrained-allow-random=true' to train them from their random start (the task "
            "tail and adapters always are), or use a checkpoint that holds them."
        )
    return {
        "format": fmt,
        "blocks": len(blocks),
        "head": [k for k in loaded if k.startswith("head.")],
        "random": random,
        "unused": sorted(set(sd) - used),
    }


def left_random(head: ClientHead, server: ServerModel, loaded: list[str]) -> list[str]:
    """Tensors of the head and the server (``head.*``, ``server.*``) not in ``loaded``,
    less those expected to start random (:data:`EXPECTED_RANDOM`)."""
    names = [f"head.{k}" for k in head.state_dict()] + [f"server.{k}" for k in server.state_dict()]
    done = set(loaded)
    return [n for n in names if n not in done and not n.startswith(EXPECTED_RANDOM)]


def _split_blocks(
    sd: dict[str, Tensor], fmt: str
) -> tuple[dict[int, dict[str, Tensor]], dict[str, Tensor]]:
    """The transformer blocks' tensors by block index, and every other tensor."""
    blocks: dict[int, dict[str, Tensor]] = {}
    others: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = _BLOCK.match(key)
        if m and (fmt == "meta-transformer" or m["prefix"] == "blocks."):
            blocks.setdefault(int(m["idx"]), {})[m["rest"]] = value
        else:
            others[key] = value
    return blocks, others


def _check_encoder_shape(
    path: str | Path, fmt: str, blocks: dict[int, dict[str, Tensor]], server: ServerModel
) -> None:
    """The checkpoint's blocks are as wide and as many as the encoder's (else a
    ``ConfigError``: ``model-size`` and ``encoder-depth`` fix it)."""
    encoder = server.encoder
    if not blocks:
        raise ConfigError(
            f"No transformer blocks found in '{path}' ({fmt} layout). Fix: "
            "pretrained-format=auto (it detects the layout), or another checkpoint."
        )
    ckpt_width = next(iter(blocks[min(blocks)].values())).shape[-1]
    if ckpt_width != encoder.width:
        raise ConfigError(
            f"Checkpoint '{path}' has width {ckpt_width}; the model has width {encoder.width}. "
            "Choose the matching 'model-size' (tiny 192, small 384, base 768, large 1024, "
            "huge 1280)."
        )
    if len(blocks) != len(encoder.blocks):
        raise ConfigError(
            f"Checkpoint '{path}' has {len(blocks)} blocks; the encoder has "
            f"{len(encoder.blocks)}. Set 'encoder-depth' to {len(blocks)} (or 0 for the size's "
            "default depth)."
        )


def _load_timm_extras(
    sd: dict[str, Tensor], head: ClientHead, server: ServerModel, loaded: list[str]
) -> set[str]:
    """A timm ViT's final norm (when the model has one), pre-norm (``norm_pre``, CLIP-style
    ViTs) and image tokenizer; appends what it fills to ``loaded`` and returns the
    checkpoint keys it used."""
    used: set[str] = set()
    targets = {"norm.": ("server.encoder.norm.", server.encoder.norm)}
    targets["norm_pre."] = ("head.pre_norm.", head.pre_norm)
    for prefix, (name, module) in targets.items():
        if isinstance(module, nn.LayerNorm) and f"{prefix}weight" in sd:
            module.load_state_dict({k: sd[prefix + k] for k in ("weight", "bias")})
            loaded += [name + "weight", name + "bias"]
            used |= {prefix + "weight", prefix + "bias"}
    if "image" in head.tokenizers and "patch_embed.proj.weight" in sd:
        used |= _load_image_tokenizer(head, sd, loaded)
    return used


def _load_image_tokenizer(head: ClientHead, sd: dict[str, Tensor], loaded: list[str]) -> set[str]:
    """The patch embedding, CLS token and (resampled) positions of a timm ViT.

    The authors' patch convolution has no bias, and neither has ours. A timm one has:
    it is added to the position of every patch token, which adds it to exactly the
    tokens the convolution's bias reaches, so the checkpoint's function is kept.
    """
    tok = head.tokenizers["image"]
    if not isinstance(tok, ImageTokenizer):
        raise TypeError(f"a timm image tokenizer loads into an ImageTokenizer, not {type(tok)}.")
    prefix = "head.tokenizers.image."
    used = {"patch_embed.proj.weight"}
    with torch.no_grad():
        tok.patch_embed.proj.weight.copy_(sd["patch_embed.proj.weight"])
        loaded.append(prefix + "patch_embed.proj.weight")
        if "cls_token" in sd:
            tok.cls_token.copy_(sd["cls_token"])
            loaded.append(prefix + "cls_token")
            used.add("cls_token")
        if "pos_embed" in sd:
            grid = tok.patch_embed.grid_size
            tok.pos_embed.copy_(resample_abs_pos_embed(sd["pos_embed"], list(grid)))
            loaded.append(prefix + "pos_embed")
            used.add("pos_embed")
        if "patch_embed.proj.bias" in sd:
            tok.pos_embed[:, 1:] += sd["patch_embed.proj.bias"]
            used.add("patch_embed.proj.bias")
    return used
