"""Client head ``W_h``: modality tokenizers plus a shared pre-LayerNorm.

Everything here runs on the client. Each tokenizer turns one modality into a sequence
of ``width``-dimensional tokens; the head then either concatenates them (early fusion,
one stream ``"fused"``) or keeps one stream per modality (late fusion). The streams
are what crosses the cut layer.

As in the authors' code, the patch-embedding convolutions have no bias, and every
modality's sequence starts with the token the server reads out: the CLS token of image
and audio, and for text the first token (CLIP's start-of-text token; the authors embed
the text as one token, this head as ``text-length`` subword tokens).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import Tensor, nn

FUSED = "fused"
FBANK_BINS = 128
IMAGE_PATCH = 16
AUDIO_PATCH = 16
AUDIO_STRIDE = 10


def _check_shape(name: str, x: Tensor, expected: tuple[int | None, ...], hint: str) -> None:
    ok = x.dim() == len(expected) and all(
        e is None or e == s for e, s in zip(expected, x.shape, strict=True)
    )
    if not ok:
        want = ", ".join("B" if e is None else str(e) for e in expected)
        raise ValueError(f"{name} batch must have shape [{want}]; got {list(x.shape)}. {hint}")


def _sincos_with_cls(grid: list[int], width: int) -> Tensor:
    """Fixed 2D sin-cos positions (MAE) as the initial value of a learned embedding, with a
    zero slot for the CLS token: a strong position signal from the first step, which
    position-dependent tasks need when training from scratch."""
    pos = build_sincos2d_pos_embed(grid, width)
    return torch.cat([torch.zeros(1, width), pos]).unsqueeze(0)


def audio_grid(frames: int) -> tuple[int, int]:
    """Patches of a ``[frames, 128]`` fbank along frequency and time (16x16, stride 10)."""
    return (
        (FBANK_BINS - AUDIO_PATCH) // AUDIO_STRIDE + 1,
        (frames - AUDIO_PATCH) // AUDIO_STRIDE + 1,
    )


def token_lengths(
    modalities: tuple[str, ...], *, image_size: int, audio_frames: int, text_length: int
) -> dict[str, int]:
    """Tokens per sample that each modality's tokenizer makes (CLS included), without
    building the tokenizers: what the server needs to find the read-out positions."""

    def length(m: str) -> int:
        if m == "image":
            return 1 + (image_size // IMAGE_PATCH) ** 2
        if m == "audio":
            return 1 + math.prod(audio_grid(audio_frames))
        return text_length

    return {m: length(m) for m in modalities}


def first_token_positions(
    lengths: Mapping[str, int], early_fusion: bool
) -> dict[str, tuple[int, ...]]:
    """Stream -> where each modality's first token (its read-out token: the image or
    audio CLS, the first text token) sits in that stream. Late fusion: at 0 of its own
    stream. Early fusion: :meth:`ClientHead.forward` concatenates the modalities in the
    order of ``lengths``, so they start at the running sums of the lengths before them."""
    if not early_fusion:
        return {m: (0,) for m in lengths}
    starts = itertools.accumulate(list(lengths.values())[:-1], initial=0)
    return {FUSED: tuple(starts)}


class ImageTokenizer(nn.Module):
    """ViT tokenizer: 16x16 patch embedding (no bias), a CLS token and learned positions."""

    def __init__(self, width: int, image_size: int, patch_size: int = IMAGE_PATCH) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image-size {image_size} is not a multiple of the patch size {patch_size}."
            )
        self.image_size = image_size
        self.patch_embed = PatchEmbed(image_size, patch_size, 3, width, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(_sincos_with_cls(list(self.patch_embed.grid_size), width))
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, images: Tensor) -> Tensor:
        _check_shape(
            "image",
            images,
            (None, 3, self.image_size, self.image_size),
            "Set run-config 'image-size' to the size your data has.",
        )
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class AudioTokenizer(nn.Module):
    """AST tokenizer: 128-bin fbank cut into 16x16 patches with stride 10 (a convolution
    without bias), CLS, positions."""

    def __init__(self, width: int, frames: int) -> None:
        super().__init__()
        if frames < AUDIO_PATCH:
            raise ValueError(f"audio-frames must be at least {AUDIO_PATCH}; got {frames}.")
        self.frames = frames
        self.proj = nn.Conv2d(1, width, kernel_size=AUDIO_PATCH, stride=AUDIO_STRIDE, bias=False)
        self.grid = audio_grid(frames)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(_sincos_with_cls(list(self.grid), width))
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, fbank: Tensor) -> Tensor:
        _check_shape(
            "audio",
            fbank,
            (None, self.frames, FBANK_BINS),
            "Audio must be a [frames, 128] kaldi fbank; set run-config 'audio-frames'.",
        )
        # [B, T, F] -> [B, 1, F, T]: frequency is the image height, as in AST.
        x = self.proj(fbank.transpose(1, 2).unsqueeze(1)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class TextTokenizer(nn.Module):
    """Subword token embedding (frozen unless asked) plus learned positions.

    Makes ``length`` tokens, not the authors' one text token: the server reads the text
    out at the first, CLIP's start-of-text token. Its input is the same for every text,
    but attention runs both ways, so its output sees the whole text (and the padding:
    the encoder has no attention mask)."""

    def __init__(
        self, width: int, vocab_size: int, length: int, train_token_embedding: bool
    ) -> None:
        super().__init__()
        self.length = length
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, width)
        # Unit-variance codes: frozen random embeddings must stay distinguishable after LN.
        nn.init.normal_(self.token_embedding.weight, std=1.0)
        self.token_embedding.weight.requires_grad_(train_token_embedding)
        self.pos_embed = nn.Parameter(torch.zeros(1, length, width))
        trunc_normal_(self.pos_embed, std=0.01)

    def forward(self, token_ids: Tensor) -> Tensor:
        _check_shape(
            "text",
            token_ids,
            (None, self.length),
            "Token ids must be padded to run-config 'text-length'.",
        )
        if token_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"text batch must hold integer token ids; got {token_ids.dtype}.")
        return self.token_embedding(token_ids) + self.pos_embed


class ClientHead(nn.Module):
    """``W_h``: one tokenizer per modality and a shared pre-LayerNorm.

    With ``label-privacy=client-tail`` (a U-shaped split) it also holds the
    ``classifier`` that would otherwise end the server's tail: the server then returns
    pooled embeddings, and :meth:`classify` turns them into logits on the client, so the
    loss and its gradient at the logits never leave it.
    """

    def __init__(
        self,
        tokenizers: Mapping[str, nn.Module],
        width: int,
        early_fusion: bool,
        classifier: nn.Module | None = None,
    ):
        super().__init__()
        self.modalities = tuple(tokenizers)
        self.tokenizers = nn.ModuleDict(dict(tokenizers))
        self.pre_norm = nn.LayerNorm(width)
        self.early_fusion = early_fusion
        self.classifier = classifier

    def classify(self, server_output: Tensor) -> Tensor:
        """The model's output from the server's: logits through the client's classifier
        if it has one, else the server's output itself."""
        return server_output if self.classifier is None else self.classifier(server_output)

    @property
    def width(self) -> int:
        """Width of every token that crosses the cut layer."""
        return self.pre_norm.normalized_shape[0]

    def stream_lengths(self) -> dict[str, int]:
        """Tokens per sample in each cut-layer stream."""
        # Every tokenizer's learned position embedding [1, L, width] fixes its L.
        lengths = {
            m: self.tokenizers[m].get_parameter("pos_embed").shape[1] for m in self.modalities
        }
        if self.early_fusion:
            return {FUSED: sum(lengths.values())}
        return lengths

    @property
    def streams(self) -> tuple[str, ...]:
        """Names of the activations that cross the cut layer."""
        return (FUSED,) if self.early_fusion else self.modalities

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise KeyError(
                f"batch lacks modality {missing}; the model expects {list(self.modalities)}."
            )
        tokens = {m: self.pre_norm(self.tokenizers[m](batch[m])) for m in self.modalities}
        if self.early_fusion:
            return {FUSED: torch.cat([tokens[m] for m in self.modalities], dim=1)}
        return tokens
