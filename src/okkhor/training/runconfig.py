"""A run's resolved config: its sources' targets and loss weights, the config.yaml it writes, and its sources."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

from okkhor.config import Config, SourceConfig
from okkhor.data.sets import EpochBatches, RunData, Source, resolve_sources, source_targets
from okkhor.errors import OkkhorError
from okkhor.targets import Targets
from okkhor.training.step import Precision
from okkhor.utils.files import write_text_atomic


def resolve_targets(sources: str | Path | Sequence[Source], cfg: Config) -> tuple[Targets, list[float]]:
    """The run's targets (metric weights from the class map, which every source must agree on) and its loss
    weights."""
    if isinstance(sources, (str, Path)):
        sources = resolve_sources(sources, cfg)
    targets = source_targets(sources, cfg)
    weights = list(cfg.train.loss_weights) or list(targets.weights)
    if len(weights) != len(targets):
        raise OkkhorError(f"config: train.loss_weights has {len(weights)} values for {len(targets)} targets "
                          f"({', '.join(targets.names)})")
    return targets, weights


def resolved_config(cfg: Config, targets: Targets, loss_weights: list[float],
                    precision: Precision | None = None, sources: Sequence[Source] = ()) -> Config:
    """The config with the target list and loss weights spelled out, `auto` precision settings resolved, and with
    several sources, the sources (dirs resolved) and the one train.select_on names."""
    out = copy.deepcopy(cfg)
    out.data.targets = list(targets.names)
    out.train.loss_weights = [float(w) for w in loss_weights]
    if len(sources) > 1:
        out.data.sources = [SourceConfig(str(s.dir.resolve()), s.name, s.share) for s in sources]
        out.train.select_on = out.train.select_on or sources[0].name
    if precision is not None:
        out.train.amp, out.train.channels_last = precision.amp, bool(precision.channels_last)
    return out


def write_config(out_dir: Path, cfg: Config, targets: Targets) -> None:
    names = ", ".join(f"{n} ({c} classes, weight {w:g})"
                      for n, c, w in zip(targets.names, targets.num_classes, targets.weights, strict=False))
    write_text_atomic(out_dir / "config.yaml",
                      f"# okkhor train: the resolved config of this run\n# targets: {names}\n" + cfg.to_yaml())


def check_select_on(cfg: Config, sources: Sequence[Source]) -> None:
    """train.select_on must name one of the run's sources."""
    names = [s.name for s in sources]
    if cfg.train.select_on and cfg.train.select_on not in names:
        raise OkkhorError(f"config: train.select_on={cfg.train.select_on!r} is not a source of this run "
                          f"({', '.join(names)})")


def source_records(data: RunData) -> list[dict]:
    """The checkpoint's record of each source of a run of several ([] for one: its data record is as before)."""
    if len(data.sources) < 2:
        return []
    return [{"name": p.source.name, "dir": str(p.source.dir), "share": p.source.share, **p.fingerprint}
            for p in data.sources]


def sources_line(data: RunData, batches: EpochBatches, select_on: str) -> str:
    """The log line of a run of several sources: each one's images, its draws per epoch and its share."""
    return ("train: sources " + "; ".join(
        f"{p.source.name} ({p.source.dir}): {p.train} training, {len(p.valid_idx)} valid, {count} per epoch (share "
        f"{w:.3f})" for p, count, w in zip(data.sources, batches.counts, batches.weights, strict=True))
        + f"; best.pt follows {select_on}'s valid score")
