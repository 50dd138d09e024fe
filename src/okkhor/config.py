"""The typed config tree: defaults, YAML files and dotted `--set key=value` overrides, validated by type."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from okkhor.errors import OkkhorError
from okkhor.options import ACTIVATIONS, AUG_PRESETS, MIX_KINDS, OPTIMIZERS, SCHEDULES
from okkhor.utils.sizes import MIN_SIDE, hw, yaml_value


class ImageSize:
    """The type of data.image_size: a square side (128) or a height and width ([128, 224], "128x224"); held as
    an int when square, else as [H, W] (okkhor.utils.sizes)."""


@dataclass
class SourceConfig:
    """One data source of a run (an entry of data.sources)."""

    dir: str = ""                  # the data dir
    name: str = ""                 # its name in metrics.csv and the logs ("": the dir's name, made unique)
    share: float = 0.0             # its share of every epoch's samples (0: the rest, split by training-set size)


@dataclass
class DataConfig:
    image_size: ImageSize = 128    # side of the square training image, or [H, W] (prepare cache size)
    crop: bool = True              # crop to the ink's bounding box before resizing
    fold: int = 0                  # validation fold
    folds: int = 5                 # number of folds made when folds.csv is missing
    limit: int = 0                 # use a stratified subset of N training images (0: all)
    workers: int = 2               # DataLoader worker processes
    persistent_workers: bool = True  # keep the workers between epochs (the epoch travels with the sampler's indices)
    prefetch_factor: int = 2       # batches each worker loads ahead (with workers > 0)
    class_map: str = ""            # path to class_map.csv ("": DATA_DIR/class_map.csv, else the built-in map)
    targets: list[str] = field(default_factory=list)  # target columns to train ([]: all in the class map)
    # several data sources in one run (okkhor.data.sets.resolve_sources): `--data A --data B`, or here as a list of
    # {dir, name, share} (a plain string is a dir); --data wins, taking the name and share of an entry of its dir
    sources: list[SourceConfig] = field(default_factory=list)
    epoch_size: int = 0            # samples drawn per epoch over all sources (0: the sum of their training folds)


@dataclass
class ModelConfig:
    name: str = "resnet18"         # any timm model name
    act: str = "default"           # default (the model's own) or any timm activation name (mish, hard_swish, ...)
    act_in_se: bool = True         # also swap activations inside squeeze-excitation blocks
    pretrained: bool = False
    dropout: float = 0.0           # dropout before the heads
    drop_path: float = 0.0         # stochastic depth, where the model supports it
    grapheme_head: bool = False    # an auxiliary head over the label triples seen in training (seen/unseen score)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: Union[int, Literal["auto"]] = 64   # micro-batch; "auto" probes memory (needs effective_batch)
    effective_batch: int = 0       # with batch_size=auto: the batch to reach with accumulation
    accum: int = 1                 # micro-batches per optimizer step
    optimizer: str = "adamw"       # okkhor.options.OPTIMIZERS: any timm optimizer name
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9          # sgd only
    schedule: str = "onecycle"     # okkhor.options.SCHEDULES
    warmup_epochs: float = 1.0     # cosine, poly, step: linear warmup length
    decay_rate: float = 0.1        # step, plateau: multiply the lr by this
    decay_epochs: float = 10.0     # step: every this many epochs; plateau: after this many epochs without a gain
    poly_power: float = 1.0        # poly: (1 - progress) ** poly_power
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 where the device runs it fast, else off (fp32)
    channels_last: Union[bool, Literal["auto"]] = "auto"  # auto: on for CUDA, off on CPU
    deterministic: bool = False    # CUDA: deterministic cuDNN, no TF32 (else cudnn.benchmark and TF32 matmul)
    compile: bool = False          # torch.compile the model
    ema: float = 0.0               # EMA decay of the weights (0: off); evaluation uses the EMA weights
    clip_grad: float = 0.0         # max gradient norm (0: off)
    loss_weights: list[float] = field(default_factory=list)  # per target ([]: the metric weights)
    label_smoothing: float = 0.0
    ohem: float = 1.0              # keep the hardest fraction of samples per batch (1.0: all)
    grapheme_loss_weight: float = 0.5  # model.grapheme_head: weight of its cross-entropy beside the targets'
    patience: int = 0              # early stopping on the valid score, in epochs (0: off)
    select_on: str = ""            # several sources: the one whose valid score picks best.pt ("": the first)
    keep_top: int = 1              # also keep the N best checkpoints by valid score (checkpoints/top-*.pt; 1: off)
    swa_epochs: int = 0            # average the weights of the last K epochs (SWA) into checkpoints/swa.pt (0: off)
    checkpoint_every: int = 0      # also save last.pt every this many iterations mid-epoch (0: at epoch ends only)
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class EvalConfig:
    train_clean_size: int = 1000   # size of the fixed clean training subset evaluated each epoch
    batch_size: int = 256


@dataclass
class AugConfig:
    preset: str = "none"           # okkhor.options.AUG_PRESETS
    file: str = ""                 # an albumentations pipeline saved with A.save (YAML/JSON); overrides preset


@dataclass
class MixConfig:
    kind: str = "none"             # okkhor.options.MIX_KINDS
    alpha: float = 1.0
    prob: float = 1.0              # share of batches mixed
    switch: float = 0.5            # kind=both: chance of cutmix instead of mixup
    k: int = 3                     # dirichlet: images mixed per sample
    layer: int = 2                 # manifold: mix features after this backbone stage
    off_epoch: int = 0             # train unmixed from this epoch on (0: never)


@dataclass
class LogConfig:
    wandb: str = ""                # a Weights & Biases project to log to ("": off; needs the wandb package)
    mlflow: str = ""               # an MLflow tracking URI, e.g. file:./mlruns ("": off; needs the mlflow package)


@dataclass
class Config:
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """All dotted keys of a config class, in declaration order."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(valid_keys(tp, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _describe(tp: Any) -> str:
    if tp is ImageSize:
        return "a side or [H, W] (128, 128x224, [128, 224])"
    if dataclasses.is_dataclass(tp):
        names = [f.name for f in dataclasses.fields(tp)]
        return f"a mapping of {', '.join(names)} (or a {names[0]} alone)"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Convert `value` to type `tp` or raise ValueError. Strict: no truthy strings, no silent float->int."""
    if tp is ImageSize:
        return yaml_value(value)
    if dataclasses.is_dataclass(tp):
        return _coerce_record(value, tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if isinstance(value, bool):  # YAML reads off/on/no/yes as booleans: map them back to the choice
            value = {False: "off", True: "on"}[value]
        for choice in typing.get_args(tp):
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ValueError
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg)
            except ValueError:
                continue
        raise ValueError
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ValueError
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ValueError
    raise ValueError


def _coerce_record(value: Any, tp: type) -> Any:
    """A list entry that is a small dataclass (data.sources): a mapping of its fields, or a plain value for its
    first field; unknown keys and bad values raise ValueError."""
    fields = dataclasses.fields(tp)
    if isinstance(value, tp):
        return value
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = {fields[0].name: value}
    if not isinstance(value, dict) or set(value) - {f.name for f in fields}:
        raise ValueError
    hints = typing.get_type_hints(tp)
    return tp(**{str(k): _coerce(v, hints[str(k)]) for k, v in value.items()})


def _set(cfg: Any, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(type(node))
        if part not in hints:
            raise OkkhorError(f"{source}: unknown config key '{key}'; valid keys: {', '.join(valid_keys())}")
        tp = hints[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise OkkhorError(f"{source}: unknown config key '{key}'; valid keys: {', '.join(valid_keys())}")
            node = getattr(node, part)
            continue
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise OkkhorError(f"{source}: '{key}' is a section; set its keys: "
                                  f"{', '.join(valid_keys(tp, key + '.'))}")
            for sub, v in value.items():
                _set(cfg, f"{key}.{sub}", v, source)
            return
        try:
            setattr(node, part, _coerce(value, tp))
        except (ValueError, TypeError):
            raise OkkhorError(f"{source}: bad value {value!r} for '{key}': expected {_describe(tp)}") from None


def apply_dict(cfg: Config, data: dict, source: str) -> Config:
    """Apply a nested dict (from YAML) onto cfg, validating every key and value."""
    if not isinstance(data, dict):
        raise OkkhorError(f"{source}: expected a mapping of config sections at the top level")
    for key, value in data.items():
        _set(cfg, str(key), value, source)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply `key=value` strings; values are parsed as YAML scalars/lists (`1e-3`, `true`, `[2,1,1]`)."""
    for item in overrides:
        if "=" not in item:
            raise OkkhorError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set(cfg, key, value, f"--set {key}")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then the overrides."""
    cfg = Config()
    if path:
        path = Path(path)
        if not path.is_file():
            raise OkkhorError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise OkkhorError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        apply_dict(cfg, data, str(path))
    apply_overrides(cfg, list(overrides))
    validate(cfg)
    return cfg


# keys older versions wrote that no longer mean anything (a test hook, now outside the config)
RETIRED_KEYS = {"train": ("oom_at",)}


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint); retired keys are dropped."""
    data = {section: ({k: v for k, v in values.items() if k not in RETIRED_KEYS.get(section, ())}
                      if isinstance(values, dict) else values) for section, values in data.items()}
    cfg = apply_dict(Config(), data, "checkpoint config")
    validate(cfg)
    return cfg


def check_choices(cfg: Config) -> None:
    """Named options against the registries that own their names (one line listing the valid ones)."""
    ACTIVATIONS.check(cfg.model.act)
    OPTIMIZERS.check(cfg.train.optimizer)
    SCHEDULES.check(cfg.train.schedule)
    AUG_PRESETS.check(cfg.aug.preset)
    MIX_KINDS.check(cfg.mix.kind)


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express, and the named options."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise OkkhorError(f"config: bad value for '{key}': {what}")

    need(min(hw(cfg.data.image_size)) >= MIN_SIDE, "data.image_size", f"each side must be at least {MIN_SIDE}")
    need(cfg.data.folds >= 2, "data.folds", "must be at least 2")
    need(0 <= cfg.data.fold < cfg.data.folds, "data.fold", f"must be in 0..{cfg.data.folds - 1}")
    need(cfg.data.limit >= 0, "data.limit", "must be >= 0")
    need(cfg.data.workers >= 0, "data.workers", "must be >= 0")
    need(cfg.data.prefetch_factor >= 1, "data.prefetch_factor", "must be >= 1")
    need(cfg.data.epoch_size >= 0, "data.epoch_size", "must be >= 0 (0: the sum of the training folds)")
    for k, source in enumerate(cfg.data.sources):
        need(bool(str(source.dir).strip()), f"data.sources[{k}].dir", "must name a data dir")
        need(0.0 <= source.share <= 1.0, f"data.sources[{k}].share", "must be in [0, 1] (0: by size)")
    need(0.0 <= cfg.model.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    need(cfg.train.epochs >= 1, "train.epochs", "must be >= 1")
    need(cfg.train.batch_size == "auto" or cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1 or auto")
    need(cfg.train.batch_size != "auto" or cfg.train.effective_batch >= 1, "train.effective_batch",
         "must be >= 1 when train.batch_size=auto")
    need(cfg.train.accum >= 1, "train.accum", "must be >= 1")
    need(cfg.train.lr > 0, "train.lr", "must be > 0")
    need(cfg.train.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(0.0 <= cfg.train.ema < 1.0, "train.ema", "must be in [0, 1) (0: off)")
    need(cfg.train.clip_grad >= 0, "train.clip_grad", "must be >= 0")
    need(0.0 <= cfg.train.label_smoothing < 1.0, "train.label_smoothing", "must be in [0, 1)")
    need(0.0 < cfg.train.ohem <= 1.0, "train.ohem", "must be in (0, 1]")
    need(cfg.train.patience >= 0, "train.patience", "must be >= 0")
    need(cfg.train.keep_top >= 1, "train.keep_top", "must be >= 1 (1: only best.pt)")
    need(0 <= cfg.train.swa_epochs <= cfg.train.epochs, "train.swa_epochs", "must be in 0..train.epochs")
    need(cfg.train.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0: at epoch ends only)")
    need(cfg.train.grapheme_loss_weight >= 0, "train.grapheme_loss_weight", "must be >= 0")
    need(cfg.eval.train_clean_size >= 0, "eval.train_clean_size", "must be >= 0")
    need(cfg.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
    need(cfg.mix.alpha > 0, "mix.alpha", "must be > 0")
    need(0.0 <= cfg.mix.prob <= 1.0, "mix.prob", "must be in [0, 1]")
    need(0.0 <= cfg.mix.switch <= 1.0, "mix.switch", "must be in [0, 1]")
    need(cfg.mix.k >= 2, "mix.k", "must be >= 2")
    need(cfg.mix.layer >= 0, "mix.layer", "must be >= 0")
    need(cfg.mix.off_epoch >= 0, "mix.off_epoch", "must be >= 0")
    need(0.0 < cfg.train.decay_rate <= 1.0, "train.decay_rate", "must be in (0, 1]")
    need(cfg.train.decay_epochs >= 0, "train.decay_epochs", "must be >= 0")
    need(cfg.train.poly_power > 0, "train.poly_power", "must be > 0")
    need(cfg.train.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
    if cfg.train.compile and cfg.mix.kind == "manifold":
        raise OkkhorError("config: train.compile=true cannot be used with mix.kind=manifold (manifold mixing runs the "
                          "backbone stage by stage, outside the compiled model); set train.compile=false or choose "
                          "another mix.kind")
    check_choices(cfg)
