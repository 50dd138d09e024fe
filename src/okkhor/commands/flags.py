"""Short flags of `okkhor train` (`--epochs 3`): each names one config key and becomes its `--set` override."""
from __future__ import annotations

import types
import typing

import typer

# flag (the parameter name typer gives it) -> config key
SHORT_FLAGS = {
    "model": "model.name",
    "epochs": "train.epochs",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "image_size": "data.image_size",
    "fold": "data.fold",
    "amp": "train.amp",
}
PANEL = "Short flags (each is its --set KEY=VALUE; --set wins)"


def _metavar(tp: typing.Any) -> str:
    """`INT`, `FLOAT`, `TEXT`, `S|HxW` (an image size), the choices of a Literal (`off|bf16|fp16`), or a union of
    them (`INT|auto`)."""
    from okkhor.config import ImageSize

    if tp is ImageSize:
        return "S|HxW"
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "|".join(str(c) for c in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return "|".join(_metavar(a) for a in typing.get_args(tp))
    return {int: "INT", float: "FLOAT"}.get(tp, "TEXT")


def _key_type(key: str) -> typing.Any:
    """The type of a dotted config key."""
    from okkhor.config import Config

    tp: typing.Any = Config
    for part in key.split("."):
        tp = typing.get_type_hints(tp)[part]
    return tp


def option(flag: str):
    """The typer option of one short flag (default None: not given); its value is checked by the config."""
    key = SHORT_FLAGS[flag]
    return typer.Option(None, "--" + flag.replace("_", "-"), metavar=_metavar(_key_type(key)),
                        help=f"Same as --set {key}=VALUE.", rich_help_panel=PANEL, show_default=False)


def short_overrides(**given: typing.Any) -> list[str]:
    """`key=value` overrides, in `--set` form, for the short flags given (None: not given)."""
    unknown = set(given) - set(SHORT_FLAGS)
    if unknown:
        raise TypeError(f"not a short flag: {', '.join(sorted(unknown))}")
    return [f"{SHORT_FLAGS[flag]}={given[flag]}" for flag in SHORT_FLAGS if given.get(flag) is not None]


def resolve_config(config: typing.Optional[str], set_: typing.Optional[list[str]], **short: typing.Any):
    """The Config of a training verb: a preset's name or a YAML file, then the short flags, then --set (wins)."""
    from okkhor.config import load_config
    from okkhor.presets import find_config

    return load_config(find_config(config) if config else None, short_overrides(**short) + (set_ or []))
