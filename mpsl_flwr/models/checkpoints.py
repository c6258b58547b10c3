"""Load pretrained encoder weights from local files (never from a hub).

Three layouts are understood:

* **Meta-Transformer** encoder checkpoints (``Meta-Transformer_base_patch16_encoder.pth``):
  the state dict of ``nn.Sequential(*[timm Block ...])``, keys ``0.norm1.weight``, ...
* **timm** ViT checkpoints (``.pth``/``.bin``/``.safetensors`` of ``VisionTransformer``):
  keys ``blocks.0.norm1.weight``, ``norm.*``, ``patch_embed.proj.*``, ``cls_token``,
  ``pos_embed``. The image tokenizer takes the patch embedding, CLS token and (resampled)
  position embedding (the patch bias folded into the positions: our convolution has
  none, as the authors'); ``norm.*`` fills the final norm when ``final-norm=true`` and is
  unused otherwise; ``norm_pre.*`` (CLIP-style ViTs) fills the pre-LayerNorm; the
  classifier head is not used.
* **mpsl**, the project's own (written by ``mpsl-pretrain``, :func:`save_mpsl`):
  ``{"mpsl": metadata, "state_dict": tensors}`` whose tensors are named as this model
  names them (``head.tokenizers.image.*``, ``head.pre_norm.*``,
  ``server.encoder.blocks.0.*``), so they load by name; the metadata (model size,
  width, depth, image size, text length, the tokenizers pre-trained, the pre-training
  task and seeds) is checked against the model before anything loads.

What a checkpoint leaves at random initialisation (besides the task tail and adapters)
is named, and fails the load unless ``pretrained-allow-random=true``.

Checkpoints wrapped in ``{"model": ...}``, ``{"state_dict": ...}`` or saved from
``DataParallel`` (``module.`` prefix) are unwrapped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from mpsl_flwr.config import ConfigError
from mpsl_flwr.models.head import ClientHead, ImageTokenizer
from mpsl_flwr.models.server import ServerModel

_BLOCK = re.compile(r"^(?P<prefix>.*?)(?P<idx>\d+)\.(?P<rest>(norm1|attn|ls1|mlp|norm2|ls2)\..*)$")
# The top-level key of an mpsl checkpoint's metadata, and the key prefixes that tell its
# tensors apart (a timm ViT's classifier is ``head.weight``, hence not just ``head.``).
MPSL_META = "mpsl"
_MPSL_PREFIXES = ("head.tokenizers.", "head.pre_norm.", "server.encoder.")
# Each tokenizer's input size: its metadata and run-config key, and its attribute.
_INPUT_SIZES = {
    "image": ("image-size", "image_size"),
    "audio": ("audio-frames", "frames"),
    "text": ("text-length", "length"),
}


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors of a local checkpoint file, unwrapped from common containers, and the
    metadata of an mpsl checkpoint (``{}`` for any other)."""
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
    meta = sd.get(MPSL_META) if isinstance(sd, dict) else None
    for key in ("model", "state_dict", "module", "encoder"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ConfigError(f"'{path}' does not hold a state dict of tensors.")
    tensors = {k.removeprefix("module."): v for k, v in sd.items()}
    return tensors, dict(meta) if isinstance(meta, dict) else {}


def detect_format(sd: dict[str, Tensor]) -> str:
    """``"mpsl"``, ``"timm"`` or ``"meta-transformer"``, from the key names."""
    if any(k.startswith(_MPSL_PREFIXES) for k in sd):
        return "mpsl"
    if any(k.startswith("blocks.") for k in sd):
        return "timm"
    if any(_BLOCK.match(k) for k in sd):
        return "meta-transformer"
    raise ConfigError(
        "Checkpoint has neither mpsl keys ('server.encoder.blocks.0.norm1.weight'), timm "
        "keys ('blocks.0.norm1.weight') nor Meta-Transformer keys ('0.norm1.weight'); "
        f"first keys: {list(sd)[:5]}."
    )


# Tensors that no encoder checkpoint holds and that every run trains from their random
# start: the task tail (classifier, retrieval projections), the client-side classifier
# and the FedCLIP adapters. Everything else left unloaded is named (see load_pretrained).
EXPECTED_RANDOM = ("head.classifier.", "server.tail.", "server.adapters.")

_HOLDS = {
    "mpsl": "An mpsl checkpoint (mpsl-pretrain) holds the pre-LayerNorm, the encoder blocks "
    "and the tokenizers of the modalities it was pre-trained on; other modalities' "
    "tokenizers stay random.",
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
    sd, meta = read_checkpoint(path)
    fmt = detect_format(sd) if fmt == "auto" else fmt
    if fmt == "mpsl":
        _check_mpsl_shape(path, meta, head, server)
        loaded = _load_by_name(sd, head, server)
        used = set(loaded)
        blocks = len({k.split(".")[3] for k in loaded if k.startswith("server.encoder.blocks.")})
    else:
        loaded, used, blocks = _load_encoder_layout(path, fmt, sd, head, server)
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
        "blocks": blocks,
        "head": [k for k in loaded if k.startswith("head.")],
        "random": random,
        "unused": sorted(set(sd) - used),
    }


def _load_encoder_layout(
    path: str | Path, fmt: str, sd: dict[str, Tensor], head: ClientHead, server: ServerModel
) -> tuple[list[str], set[str], int]:
    """Load a timm or Meta-Transformer checkpoint: the model tensors filled, the
    checkpoint keys used, and how many blocks it has."""
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
    return loaded, used, len(blocks)


def model_shape(head: ClientHead, server: ServerModel) -> dict[str, int]:
    """What an mpsl checkpoint must share with the model it loads into: the encoder's
    width and depth, and each tokenizer's input size (keys as in the metadata)."""
    shape = {"width": server.encoder.width, "depth": len(server.encoder.blocks)}
    for modality, tokenizer in head.tokenizers.items():
        key, attr = _INPUT_SIZES[modality]
        shape[key] = int(getattr(tokenizer, attr))
    return shape


def save_mpsl(
    path: str | Path, head: ClientHead, server: ServerModel, meta: dict[str, Any]
) -> dict[str, Any]:
    """Write an mpsl checkpoint of ``head``'s tokenizers and pre-norm and ``server``'s
    encoder, with ``meta`` plus the model's shape (:func:`model_shape`) and tokenizers as
    its metadata; atomically (a temporary file, then ``os.replace``), so that a reader
    never sees half a file. Returns the metadata written."""
    path = Path(path)
    tensors = {
        name: value.detach().cpu()
        for prefix, module in (("head.", head), ("server.", server))
        for name, value in ((prefix + k, v) for k, v in module.state_dict().items())
        if name.startswith(_MPSL_PREFIXES)
    }
    meta = {**meta, **model_shape(head, server), "tokenizers": list(head.modalities)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({MPSL_META: meta, "state_dict": tensors}, tmp)
    os.replace(tmp, path)
    return meta


def _check_mpsl_shape(
    path: str | Path, meta: dict[str, Any], head: ClientHead, server: ServerModel
) -> None:
    """The mpsl checkpoint's metadata has the model's width, depth and the input size of
    every tokenizer both have (else a one-line ``ConfigError`` naming the run-config
    key that fixes it)."""
    if not meta:
        raise ConfigError(
            f"Checkpoint '{path}' has mpsl tensor names but no '{MPSL_META}' metadata. Fix: "
            "write it with mpsl-pretrain, or set pretrained-format to its real layout."
        )
    for key, value in model_shape(head, server).items():
        if key not in meta or meta[key] == value:
            continue
        fixes = {
            "width": f"model-size='{meta.get('model-size')}'",
            "depth": f"encoder-depth={meta[key]}",
        }
        fix = fixes.get(key, f"{key}={meta[key]}")
        raise ConfigError(
            f"Checkpoint '{path}' was pre-trained with {key} {meta[key]}; this model has "
            f"{key} {value}. Fix: set run-config '{fix}', or pre-train again with "
            f"mpsl-pretrain at {key} {value}."
        )


def _load_by_name(sd: dict[str, Tensor], head: ClientHead, server: ServerModel) -> list[str]:
    """Copy every checkpoint tensor that the model has under the same name (``head.*``,
    ``server.*``); returns the names filled."""
    loaded: list[str] = []
    for prefix, module in (("head.", head), ("server.", server)):
        own = module.state_dict()
        part = {
            k[len(prefix) :]: v
            for k, v in sd.items()
            if k.startswith(prefix) and k[len(prefix) :] in own
        }
        module.load_state_dict(part, strict=False)
        loaded += [prefix + k for k in part]
    return loaded


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
