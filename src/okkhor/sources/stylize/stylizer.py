"""The stylizer file: its options, its four networks, and a save and load that hold only tensors and plain values."""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from okkhor.errors import OkkhorError
from okkhor.io import checkpoint
from okkhor.sources.stylize.nets import Discriminator, Generator
from okkhor.utils.files import atomic_path

FORMAT = "okkhor-stylizer"
VERSION = 1
NETS = ("synth_to_real", "real_to_synth", "disc_real", "disc_synth")


@dataclass(frozen=True)
class StylizeOptions:
    """What a fit learns with; every value is saved in the stylizer file.

    size: the side of the square crops both domains are prepared at (okkhor prepare's ink crop), a multiple of 8.
    channels / blocks: the generators' width (full resolution has channels // 2, the blocks 2 * channels) and
    residual blocks; disc_channels: the first layer of the PatchGAN discriminators (3 layers: 38 px patches).
    cycle_weight: CycleGAN's lambda of the L1 cycle loss; identity_weight: its identity loss, as a fraction of
    cycle_weight (CycleGAN's lambda_identity; 0 skips it and its two generator passes). lr: Adam's (betas 0.5,
    0.999), constant for the first half of the steps, then linear to zero. pool: past fakes each discriminator also
    sees (CycleGAN's image pool of 50). bf16: bfloat16 autocast on CPU (faster where the CPU has bf16 units).
    """

    size: int = 64
    steps: int = 2000
    batch: int = 16
    seed: int = 0
    channels: int = 16
    blocks: int = 3
    disc_channels: int = 16
    lr: float = 2e-4
    cycle_weight: float = 10.0
    identity_weight: float = 0.5
    pool: int = 50
    bf16: bool = False

    def __post_init__(self) -> None:
        checks = (("--size", self.size >= 16 and self.size % 8 == 0, "a multiple of 8, at least 16"),
                  ("--steps", self.steps >= 1, "at least 1"),
                  ("--batch", self.batch >= 1, "at least 1"),
                  ("--seed", self.seed >= 0, "at least 0"),
                  ("--channels", self.channels >= 2, "at least 2"),
                  ("--blocks", self.blocks >= 0, "at least 0"),
                  ("--disc-channels", self.disc_channels >= 1, "at least 1"),
                  ("--lr", self.lr > 0, "above 0"),
                  ("--cycle-weight", self.cycle_weight >= 0, "at least 0"),
                  ("--identity-weight", self.identity_weight >= 0, "at least 0"),
                  ("--pool", self.pool >= 0, "at least 0"))
        for name, ok, want in checks:
            if not ok:
                raise OkkhorError(f"{name} {getattr(self, name[2:].replace('-', '_'))}: must be {want}")


def build_nets(opts: StylizeOptions) -> dict[str, nn.Module]:
    """The two generators (synthetic -> real, real -> synthetic) and the two discriminators, freshly initialised
    from torch's global generator."""
    return {"synth_to_real": Generator(opts.channels, opts.blocks),
            "real_to_synth": Generator(opts.channels, opts.blocks),
            "disc_real": Discriminator(opts.disc_channels), "disc_synth": Discriminator(opts.disc_channels)}


def save_stylizer(path: str | Path, opts: StylizeOptions, nets: dict[str, nn.Module],
                  history: dict[str, list[float]], data: dict[str, Any]) -> Path:
    """Write the stylizer atomically: the format tag, the options, each network's state dict, the loss history and
    plain facts about the data; the same content gives the same bytes."""
    state = {"format": FORMAT, "version": VERSION, "options": asdict(opts),
             "nets": {name: nets[name].state_dict() for name in NETS},
             "history": {k: [float(v) for v in vals] for k, vals in history.items()}, "data": dict(data)}
    buffer = io.BytesIO()   # a file name would end up inside the archive; the bytes must not depend on it
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def load_stylizer(path: str | Path) -> tuple[StylizeOptions, dict[str, nn.Module], dict[str, Any]]:
    """(options, networks in eval mode, the whole file's content) of a stylizer file written by `save_stylizer`."""
    path = Path(path)
    state = checkpoint.load(path, what="stylizer")   # runs no code from the file
    if state.get("format") != FORMAT:
        raise OkkhorError(f"{path}: not an okkhor stylizer (no format tag {FORMAT!r}); make one with "
                          f"`okkhor stylize fit`")
    if state.get("version") != VERSION:
        raise OkkhorError(f"{path}: stylizer format version {state.get('version')!r}; this okkhor reads {VERSION}")
    given = state.get("options")
    known = {f.name for f in fields(StylizeOptions)}
    if not isinstance(given, dict) or set(given) - known:
        raise OkkhorError(f"{path}: stylizer options unreadable or unknown ({sorted(set(given or ()) - known)})")
    opts = StylizeOptions(**given)
    nets = build_nets(opts)
    weights = state.get("nets")
    for name in NETS:
        if not isinstance(weights, dict) or not isinstance(weights.get(name), dict):
            raise OkkhorError(f"{path}: stylizer lacks the weights of {name}")
        try:
            nets[name].load_state_dict(weights[name])
        except RuntimeError as exc:
            raise OkkhorError(f"{path}: the weights of {name} do not fit its options "
                              f"({str(exc).splitlines()[0]})") from None
        nets[name].eval()
    return opts, nets, state
