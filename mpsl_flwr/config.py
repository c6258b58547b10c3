"""The one configuration surface of mpsl-flwr.

Every knob is a ``[tool.flwr.app.config]`` key in ``pyproject.toml`` (kebab-case) and a
field of :class:`RunConfig` (snake_case). The same keys reach every path: the
ServerApp and ClientApp read them from ``context.run_config``; the centralized entry
point and the launcher read them from ``pyproject.toml`` plus ``key=value`` overrides
in the syntax of ``flwr run --run-config``. Unknown keys, wrong types and values
outside their choices fail early with a message naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from mpsl_flwr.data.names import DATASETS
from mpsl_flwr.project import PROJECT_DIR
from mpsl_flwr.registry import STRATEGIES, strategy_spec

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Strategy = str
else:  # the registry's names, validated like every other choice
    Strategy = Literal[tuple(STRATEGIES)]
ModelSize = Literal["tiny", "small", "base", "large", "huge"]
Fusion = Literal["auto", "early", "late"]
HeadSync = Literal["push", "keep"]
LrSchedule = Literal["cosine", "constant"]
ActivationDtype = Literal["float32", "float16", "bfloat16"]
Device = Literal["auto", "cpu", "cuda"]
ServerPrecision = Literal["auto", "fp32", "bf16"]
PretrainedFormat = Literal["auto", "mpsl", "meta-transformer", "timm"]
Readout = Literal["modality-tokens", "all-tokens"]
ImageNorm = Literal["auto", "clip", "imagenet", "inception"]
MissingFiles = Literal["fail", "skip"]
RetrievalPartition = Literal["iid", "dirichlet-cluster"]
AdapterSharing = Literal["per-modality", "shared"]
LabelPrivacy = Literal["none", "client-tail", "label-dp", "client-tail+label-dp"]


_Part = TypeVar("_Part", bound="DataclassInstance")


class ConfigError(ValueError):
    """A run-config key is unknown, of the wrong type, or out of range."""


# The parts of a run config. Each is a frozen view of some flat keys of RunConfig (same
# field names, same values), so a builder can take only the part it needs while the
# run config stays one flat surface of kebab-case keys. ``strategy``, ``seed`` and the
# staged strategies' ``stage-*`` keys belong to no part: ``seed`` fixes the data
# partitions, the clients' batch order and the initial weights alike, so builders that
# need it take it as an argument of its own.


# The encoder depth of the paper's models: each size's own (12 blocks for Ti/S/B). The
# tools that measure the paper's tables (mpsl-costs, mpsl-traffic-sweep, claims 3 and 5
# of mpsl-paper-claims) start from it, not from the default run's shallower encoder.
FULL_DEPTH: dict[str, Any] = {"encoder-depth": 0}


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, its input sizes, and how its training split is partitioned."""

    dataset: str
    data_dir: str
    data_seed: int
    synthetic_train_size: int
    synthetic_test_size: int
    synthetic_difficulty: float
    image_size: int
    audio_frames: int
    text_length: int
    image_norm: ImageNorm
    missing_files: MissingFiles
    dirichlet_alpha: float
    min_partition_size: int
    retrieval_partition: RetrievalPartition
    retrieval_clusters: int


@dataclass(frozen=True)
class ModelConfig:
    """The encoder, which of it trains, fusion, pretrained weights and the tails' knobs."""

    model_size: ModelSize
    encoder_depth: int
    finetune_blocks: int
    fusion: Fusion
    readout: Readout
    final_norm: bool
    pretrained: str
    pretrained_format: PretrainedFormat
    pretrained_allow_random: bool
    train_token_embedding: bool
    temperature: float
    fedclip_adapter: AdapterSharing
    fedclip_train_tokenizers: bool

    @property
    def depth(self) -> int:
        """Number of transformer blocks in the server body."""
        from mpsl_flwr.models.sizes import ENCODER_SIZES

        return self.encoder_depth or ENCODER_SIZES[self.model_size].depth

    @property
    def trainable_blocks(self) -> int:
        """How many of the last blocks train (``finetune-blocks``, -1 = all)."""
        return self.depth if self.finetune_blocks < 0 else self.finetune_blocks


@dataclass(frozen=True)
class OptimConfig:
    """Global batch, epochs, and the AdamW optimiser and schedule of both sides."""

    batch_size: int
    epochs: int
    learning_rate: float
    weight_decay: float
    lr_schedule: LrSchedule
    warmup_ratio: float


@dataclass(frozen=True)
class FederationConfig:
    """How clients are served and trusted: nodes, timeouts, traffic, devices."""

    clients_per_node: int
    head_sync: HeadSync
    min_nodes: int
    node_wait_timeout: float
    step_timeout: float
    activation_dtype: ActivationDtype
    max_client_mb: float
    max_abs_activation: float
    max_partition_size: int
    node_registry: str
    server_device: Device
    client_device: Device
    server_precision: ServerPrecision


@dataclass(frozen=True)
class PrivacyConfig:
    """How the labels are protected from the server (``label-privacy``, ``label-epsilon``)."""

    label_privacy: LabelPrivacy
    label_epsilon: float

    @property
    def client_tail(self) -> bool:
        """The classifier and the loss live on the client (U-shaped split)."""
        return "client-tail" in self.label_privacy

    @property
    def label_dp(self) -> bool:
        """Each client trains on randomized-response labels (epsilon-label-DP)."""
        return "label-dp" in self.label_privacy


@dataclass(frozen=True)
class OutputConfig:
    """Where a run writes, how it evaluates and checkpoints, and what it shows."""

    output_dir: str
    run_name: str
    eval_batch_size: int
    checkpoint_every: int
    resume: bool
    progress: bool


@dataclass(frozen=True)
class RunConfig:
    """All run-config keys with their defaults (mirrors ``[tool.flwr.app.config]``)."""

    # What to run
    strategy: Strategy = "mpsl"
    dataset: str = "synthetic-vqa"
    data_dir: str = ""
    data_seed: int = 0
    synthetic_train_size: int = 3000
    synthetic_test_size: int = 600
    synthetic_difficulty: float = 0.1
    image_size: int = 0
    audio_frames: int = 0
    text_length: int = 0
    image_norm: ImageNorm = "auto"
    missing_files: MissingFiles = "skip"
    # Model
    model_size: ModelSize = "tiny"
    encoder_depth: int = 4
    finetune_blocks: int = -1
    fusion: Fusion = "auto"
    readout: Readout = "modality-tokens"
    final_norm: bool = False
    pretrained: str = ""
    pretrained_format: PretrainedFormat = "auto"
    pretrained_allow_random: bool = False
    train_token_embedding: bool = False
    temperature: float = 0.07
    fedclip_adapter: AdapterSharing = "per-modality"
    fedclip_train_tokenizers: bool = False
    stage_blocks: int = 2
    stage_rounds: int = 0
    # Optimisation
    batch_size: int = 64
    epochs: int = 6
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    lr_schedule: LrSchedule = "cosine"
    warmup_ratio: float = 0.05
    seed: int = 0
    # Federation
    dirichlet_alpha: float = 0.1
    min_partition_size: int = 2
    retrieval_partition: RetrievalPartition = "iid"
    retrieval_clusters: int = 10
    clients_per_node: int = 1
    head_sync: HeadSync = "push"
    min_nodes: int = 0
    node_wait_timeout: float = 300.0
    step_timeout: float = 120.0
    activation_dtype: ActivationDtype = "float32"
    max_client_mb: float = 256.0
    max_abs_activation: float = 0.0  # 0 = auto (see strategies.mpsl.legs.activation_bound)
    max_partition_size: int = 500_000
    node_registry: str = ""  # "" = none: a client id goes to its first claimant
    # Label privacy (docs/privacy.md)
    label_privacy: LabelPrivacy = "none"
    label_epsilon: float = 2.0
    # Devices
    server_device: Device = "auto"
    client_device: Device = "cpu"
    server_precision: ServerPrecision = "auto"  # mpsl_flwr.precision
    # Output
    output_dir: str = "outputs"
    run_name: str = ""
    eval_batch_size: int = 256
    checkpoint_every: int = 1
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        _check_ranges(self)

    @classmethod
    def keys(cls) -> list[str]:
        """All run-config keys, kebab-case, in declaration order."""
        return [_key(f.name) for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from kebab-case keys (e.g. ``context.run_config``); missing keys take defaults."""
        by_key = {_key(f.name): f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in by_key:
                raise ConfigError(_unknown_key_message(key, list(by_key)))
            field = by_key[key]
            kwargs[field.name] = _coerce(key, value, _field_type(field))
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Kebab-case key to value, as written to ``[tool.flwr.app.config]``."""
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields (snake_case) changed."""
        return dataclasses.replace(self, **changes)

    @functools.cached_property
    def data(self) -> DataConfig:
        """The dataset and partitioning keys."""
        return self._part(DataConfig)

    @functools.cached_property
    def model(self) -> ModelConfig:
        """The model keys."""
        return self._part(ModelConfig)

    @functools.cached_property
    def optim(self) -> OptimConfig:
        """The optimisation keys."""
        return self._part(OptimConfig)

    @functools.cached_property
    def federation(self) -> FederationConfig:
        """The federation and device keys."""
        return self._part(FederationConfig)

    @functools.cached_property
    def privacy(self) -> PrivacyConfig:
        """The label-privacy keys."""
        return self._part(PrivacyConfig)

    @functools.cached_property
    def output(self) -> OutputConfig:
        """The output, evaluation and checkpoint keys."""
        return self._part(OutputConfig)

    def _part(self, part: type[_Part]) -> _Part:
        return part(**{f.name: getattr(self, f.name) for f in fields(part)})

    @property
    def depth(self) -> int:
        """Number of transformer blocks in the server body."""
        return self.model.depth

    @property
    def trainable_blocks(self) -> int:
        """How many of the last blocks train (``finetune-blocks``, -1 = all)."""
        return self.model.trainable_blocks


def load_pyproject_config(project_dir: str | Path | None = None) -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table of the project's ``pyproject.toml``."""
    path = Path(project_dir or PROJECT_DIR) / "pyproject.toml"
    if not path.is_file():
        return {}
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return dict(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


# The key=value pattern of ``flwr.common.config.parse_config_args`` (Flower 1.41/1.42),
# which keeps it inside the function; tests/test_config.py checks it against the source.
FLOWER_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` overrides parsed by Flower's own ``flwr run --run-config`` parser.

    One syntax everywhere: what ``mpsl-run``, ``make run`` and the tools accept is exactly
    what ``flwr run`` accepts (values are TOML: strings quoted, ``dataset='synthetic-va'``;
    a ``.toml`` file path works too). What Flower would refuse is refused here in one line
    naming the pair and its quoted form; text that is no ``key=value`` pair at all, which
    Flower would silently ignore, is refused too.
    """
    if not items:
        return {}
    from flwr.common.config import parse_config_args

    for item in items:
        if not item.endswith(".toml") and (rest := FLOWER_PAIR.sub("", item).strip()):
            raise ConfigError(
                f"Override text {rest!r} is not of the form key=value (in {item!r}); "
                "write e.g. --run-config \"epochs=3 dataset='synthetic-va'\"."
            )
    try:
        return dict(parse_config_args(items))
    except Exception as err:  # click.ClickException, ValueError: say which pair
        raise ConfigError(_bad_pair(items) or f"Could not read the overrides: {err}") from err


def _bad_pair(items: list[str]) -> str | None:
    """The first ``key=value`` of ``items`` that Flower cannot take, and its fix."""
    for key, raw in (pair for item in items for pair in FLOWER_PAIR.findall(item)):
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = None
        if not isinstance(value, (bool, int, float, str)):
            return (
                f"Run-config value {key}={raw} is not a number, boolean or quoted string "
                f"(flwr run's syntax); quote it: {key}='{raw.strip(chr(39) + chr(34))}'."
            )
    return None


def resolve_config(
    overrides: list[str] | Mapping[str, Any] | None = None,
    project_dir: str | Path | None = None,
) -> RunConfig:
    """Defaults, then ``pyproject.toml``, then overrides: what ``flwr run`` would use."""
    values = load_pyproject_config(project_dir)
    if isinstance(overrides, Mapping):
        values.update(overrides)
    else:
        values.update(parse_overrides(overrides))
    return RunConfig.from_mapping(values)


def _key(name: str) -> str:
    return name.replace("_", "-")


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def _field_type(field: dataclasses.Field[Any]) -> Any:
    return _field_types()[field.name]


@functools.cache
def _defaults_table() -> dict[str, Any]:
    return {f.name: f.default for f in fields(RunConfig)}


def _unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (
        f"Unknown run-config key '{key}'.{hint} Valid keys are listed in "
        f"[tool.flwr.app.config] of pyproject.toml: {', '.join(valid)}."
    )


def _coerce(key: str, value: Any, typ: Any) -> Any:
    if typing.get_origin(typ) is Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise choice_error(key, value, choices)
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
        # run-name=123 arrives as an int from flwr run; its text is unambiguous.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    elif isinstance(typ, types.UnionType):  # pragma: no cover - no unions today
        return value
    raise ConfigError(
        f"Run-config key '{key}' expects a {typ.__name__}; got {value!r} "
        f"({type(value).__name__}). Example: --run-config '{key}={_example(typ)}'."
    )


def _example(typ: Any) -> str:
    return {bool: "true", int: "8", float: "0.5", str: '"text"'}.get(typ, "...")


def choice_error(key: str, value: Any, choices: tuple[Any, ...]) -> ConfigError:
    """``key`` got ``value``, which is none of ``choices``: name the closest one."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"Run-config key '{key}' must be one of {', '.join(map(str, choices))}; "
        f"got {value!r}.{hint}"
    )


def range_error(name: str, value: Any, rule: str, fix: str | None = None) -> ConfigError:
    """Field ``name`` (snake_case) holds ``value``, which breaks ``rule``: one line
    naming the key, the value and a fix (by default, the key's default value)."""
    key = _key(name)
    if fix is None:
        fix = f"e.g. --run-config '{key}={toml_value(_defaults_table()[name])}'"
    return ConfigError(f"Run-config key '{key}' must be {rule}; got {value!r}. Fix: {fix}.")


def toml_value(value: Any) -> str:
    """``value`` as a TOML value, as written after ``key=`` in ``--run-config``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


# Which keys each generic rule covers. A key in none of them has a check of its own
# below (or takes any value of its type).
_POSITIVE = (
    "synthetic_train_size",
    "synthetic_test_size",
    "batch_size",
    "epochs",
    "clients_per_node",
    "eval_batch_size",
    "retrieval_clusters",
    "stage_blocks",
    "max_partition_size",
    "learning_rate",
    "dirichlet_alpha",
    "temperature",
    "max_client_mb",
    "step_timeout",
    "node_wait_timeout",
)
_ZERO_IS_DEFAULT = (
    "image_size",
    "audio_frames",
    "text_length",
    "encoder_depth",
    "min_nodes",
    "checkpoint_every",
    "stage_rounds",
    "max_abs_activation",
)
_NON_NEGATIVE = ("seed", "data_seed", "weight_decay", "min_partition_size")
PATCH_SIZE = 16
"""Side of the image patches (the ViT tokenizer): ``image-size`` must be a multiple."""


def _check_ranges(cfg: RunConfig) -> None:
    _check_label_privacy(cfg)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise range_error(f.name, value, "a finite number")
    for name in _POSITIVE:
        if getattr(cfg, name) <= 0:
            raise range_error(name, getattr(cfg, name), "> 0")
    for name in _ZERO_IS_DEFAULT:
        if getattr(cfg, name) < 0:
            raise range_error(name, getattr(cfg, name), ">= 0 (0 = the default)")
    for name in _NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise range_error(name, getattr(cfg, name), ">= 0")
    if cfg.dataset not in DATASETS:
        raise choice_error("dataset", cfg.dataset, DATASETS)
    if cfg.image_size % PATCH_SIZE:
        below = cfg.image_size // PATCH_SIZE * PATCH_SIZE
        raise range_error(
            "image_size",
            cfg.image_size,
            f"a multiple of the {PATCH_SIZE}-pixel patch (or 0 = the dataset's default)",
            f"image-size={below or PATCH_SIZE} or {below + PATCH_SIZE}",
        )
    if not 0.0 <= cfg.synthetic_difficulty <= 1.0:
        raise range_error("synthetic_difficulty", cfg.synthetic_difficulty, "in [0, 1]")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise range_error("warmup_ratio", cfg.warmup_ratio, "in [0, 1)")
    if cfg.resume and not strategy_spec(cfg.strategy).resumable:
        resumable = [name for name, s in STRATEGIES.items() if s.resumable]
        raise ConfigError(
            f"resume=true is supported for strategy {' and '.join(resumable)}, not {cfg.strategy}."
        )
    if cfg.resume and not cfg.run_name:
        raise ConfigError("resume=true needs 'run-name' set to the run to resume.")
    _check_run_name(cfg.run_name)
    if cfg.node_registry and not Path(cfg.node_registry).is_absolute():
        raise ConfigError(
            "Run-config key 'node-registry' must be an absolute path (the ServerApp's working "
            f'directory is Flower\'s, not yours) or "" for none; got {cfg.node_registry!r}.'
        )
    if cfg.finetune_blocks < -1 or cfg.finetune_blocks > cfg.depth:
        raise ConfigError(
            f"Run-config key 'finetune-blocks' must lie in [0, {cfg.depth}] "
            f"(the encoder depth) or be -1 for all blocks; got {cfg.finetune_blocks}."
        )


def _check_run_name(name: str) -> None:
    """A run directory is ``<output-dir>/<run-name>``: the name must not lead out of it."""
    if name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise ConfigError(
            f"Run-config key 'run-name' must be a plain directory name (no '/' or '\\', "
            f"not '.' or '..'); got {name!r}. Choose where runs go with 'output-dir'."
        )


def _check_label_privacy(cfg: RunConfig) -> None:
    """What can be checked without the dataset (its kind and classes: ``Experiment``)."""
    if cfg.label_privacy == "none":
        return
    if strategy_spec(cfg.strategy).side != "split":
        raise ConfigError(
            f"label-privacy={cfg.label_privacy} protects the labels of MPSL's loss leg; "
            f"strategy {cfg.strategy} sends the server no label-derived tensor. Set "
            "label-privacy=none or strategy=mpsl."
        )
    if "label-dp" in cfg.label_privacy and not (
        math.isfinite(cfg.label_epsilon) and cfg.label_epsilon > 0
    ):
        raise ConfigError(
            f"Run-config key 'label-epsilon' must be a finite number > 0 for "
            f"label-privacy={cfg.label_privacy}; got {cfg.label_epsilon}. "
            "Example: --run-config 'label-epsilon=2.0'."
        )
