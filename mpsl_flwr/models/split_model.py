"""Build the three-part model (head on the client; body and tail on the server).

Head, body and tail are built from separate seeded generators, so a client that builds
only its head and a server that builds only its part get exactly the weights that the
whole model built in one process (centralized training, FedAvg) would have, and the
classifier has the same initial weights whichever side holds it (``client_tail``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mpsl_flwr.config import ModelConfig
from mpsl_flwr.data.base import DatasetInfo
from mpsl_flwr.data.text import VOCAB_SIZE
from mpsl_flwr.models.adapter import AttentionAdapter
from mpsl_flwr.models.head import (
    FUSED,
    AudioTokenizer,
    ClientHead,
    ImageTokenizer,
    TextTokenizer,
    first_token_positions,
    token_lengths,
)
from mpsl_flwr.models.server import ClassificationTail, Encoder, ServerModel, TokenReadout
from mpsl_flwr.models.sizes import ENCODER_SIZES
from mpsl_flwr.registry import ModelOptions
from mpsl_flwr.tasks import Task, task_of


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes the architecture (derived from run config + dataset info)."""

    modalities: tuple[str, ...]
    kind: str
    num_classes: int
    width: int
    depth: int
    heads: int
    trainable_blocks: int
    early_fusion: bool
    image_size: int
    audio_frames: int
    text_length: int
    train_token_embedding: bool
    temperature: float
    seed: int
    adapter: str = "none"
    train_head: bool = True
    client_tail: bool = False
    readout: str = "modality-tokens"
    final_norm: bool = False

    @classmethod
    def from_config(
        cls,
        model: ModelConfig,
        info: DatasetInfo,
        *,
        options: ModelOptions,
        seed: int,
        client_tail: bool = False,
    ) -> ModelSpec:
        """The spec of ``model`` for ``info``'s dataset; ``seed`` fixes the initial
        weights, ``options`` what the strategy changes (frozen blocks, adapters),
        ``client_tail`` whether the classifier lives in the client head."""
        task = task_of(info)
        size = ENCODER_SIZES[model.model_size]
        fusion = task.fusion(model.fusion)
        return cls(
            modalities=info.modalities,
            kind=info.kind,
            num_classes=info.num_classes,
            width=size.width,
            depth=model.depth,
            heads=size.heads,
            trainable_blocks=(
                model.trainable_blocks
                if options.trainable_blocks is None
                else options.trainable_blocks
            ),
            early_fusion=fusion == "early",
            image_size=info.image_size,
            audio_frames=info.audio_frames,
            text_length=info.text_length,
            train_token_embedding=model.train_token_embedding,
            temperature=model.temperature,
            seed=seed,
            adapter=options.adapter,
            train_head=options.train_head,
            client_tail=client_tail,
            readout=model.readout,
            final_norm=model.final_norm,
        )

    @property
    def task(self) -> Task:
        """The task the tail is built for."""
        return task_of(self.kind)


def build_head(spec: ModelSpec) -> ClientHead:
    """The client head ``W_h`` (same weights on every client for the same seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        tokenizers: dict[str, nn.Module] = {}
        for m in spec.modalities:
            if m == "image":
                tokenizers[m] = ImageTokenizer(spec.width, spec.image_size)
            elif m == "audio":
                tokenizers[m] = AudioTokenizer(spec.width, spec.audio_frames)
            else:
                tokenizers[m] = TextTokenizer(
                    spec.width, VOCAB_SIZE, spec.text_length, spec.train_token_embedding
                )
        classifier = _classification_tail(spec).fc if spec.client_tail else None
        head = ClientHead(tokenizers, spec.width, spec.early_fusion, classifier)
    apply_trainable(spec, head=head)
    return head


def build_tail(spec: ModelSpec) -> nn.Module:
    """The task's tail ``W_t`` (pooling + classifier, or the retrieval projections), from a
    generator of its own."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed + 2)
        return spec.task.make_tail(spec.width, spec.num_classes, spec.temperature)


def _classification_tail(spec: ModelSpec) -> ClassificationTail:
    tail = build_tail(spec)
    if not isinstance(tail, ClassificationTail):
        raise ValueError(f"a {spec.kind} task has no classifier to move to the client.")
    return tail


def build_server(spec: ModelSpec) -> ServerModel:
    """The server part: body ``W_b`` (last ``k`` blocks trainable) and tail ``W_t``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed + 1)
        encoder = Encoder(spec.width, spec.depth, spec.heads, final_norm=spec.final_norm)
        streams = (FUSED,) if spec.early_fusion else spec.modalities
        adapters = None
        if spec.adapter != "none":
            keys = ("shared",) if spec.adapter == "shared" else streams
            adapters = nn.ModuleDict({k: AttentionAdapter(spec.width) for k in keys})
    # client_tail: the classifier is in the head (build_head); pooling stays here.
    tail = _classification_tail(spec).pool if spec.client_tail else build_tail(spec)
    server = ServerModel(encoder, tail, streams, _readout(spec, streams), adapters)
    apply_trainable(spec, server=server)
    return server


def _readout(spec: ModelSpec, streams: tuple[str, ...]) -> TokenReadout:
    """``readout=modality-tokens`` (the authors'): each modality's first token, wherever
    the head puts it; ``all-tokens``: the earlier mean over the tokens."""
    if spec.readout == "all-tokens":
        return TokenReadout.all_tokens(streams)
    lengths = token_lengths(
        spec.modalities,
        image_size=spec.image_size,
        audio_frames=spec.audio_frames,
        text_length=spec.text_length,
    )
    return TokenReadout(first_token_positions(lengths, spec.early_fusion))


def apply_trainable(
    spec: ModelSpec, head: ClientHead | None = None, server: ServerModel | None = None
) -> None:
    """Set ``requires_grad`` by the spec: the last ``k`` blocks, tail and adapters always,
    the head's tokenizers unless frozen (FedCLIP), the token table only if asked."""
    if head is not None:
        head.requires_grad_(spec.train_head)
        if "text" in head.tokenizers:
            head.tokenizers["text"].get_parameter("token_embedding.weight").requires_grad_(
                spec.train_head and spec.train_token_embedding
            )
    if server is not None:
        server.encoder.set_trainable_blocks(spec.trainable_blocks)


class SplitModel(nn.Module):
    """Head and server part joined: the whole model, for centralized training and FedAvg."""

    def __init__(self, head: ClientHead, server: ServerModel) -> None:
        super().__init__()
        self.head = head
        self.server = server

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head.classify(self.server(self.head(batch)))


def build_model(spec: ModelSpec) -> SplitModel:
    """Head and server together, initialised exactly as when built apart."""
    return SplitModel(build_head(spec), build_server(spec))


def trainable_state(module: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters by name (what a strategy exchanges or checkpoints)."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` into ``module``'s trainable parameters; names must match exactly."""
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(f"state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    with torch.no_grad():
        for name, p in params.items():
            value = state[name]
            if value.shape != p.shape:
                raise ValueError(
                    f"'{name}' has shape {list(value.shape)}; the model expects {list(p.shape)}."
                )
            p.copy_(value.to(p.dtype))


def count_trainable(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
