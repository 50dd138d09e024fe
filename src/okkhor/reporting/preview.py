"""A PNG grid of augmented, mixed training samples with their mixed labels, to see what a recipe feeds the model."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from okkhor.bengali import SHORT_NAMES
from okkhor.config import AugConfig, MixConfig
from okkhor.data.augment import build_augment
from okkhor.data.dataset import sample_seed, to_tensor
from okkhor.data.prepare import load_cache, prepare
from okkhor.errors import OkkhorError
from okkhor.io.labels import load_targets, read_train_labels
from okkhor.options import AUG_PRESETS, MIX_KINDS
from okkhor.targets import Targets
from okkhor.training.mixing import MixedTargets, Mixer
from okkhor.utils.files import atomic_path
from okkhor.utils.sizes import Size, size_text

MAX_SAMPLES = 256


def short_names(names: Sequence[str]) -> list[str]:
    """Caption names of targets: the Bengali three's own, others their first letter (full names if ambiguous)."""
    short = [SHORT_NAMES.get(n, n[:1]) for n in names]
    return short if len(set(short)) == len(short) else list(names)


def caption(labels: np.ndarray, weights: np.ndarray, names: Sequence[str]) -> str:
    """One sample's mixed label: sources [K, T] and weights [K] -> 'r12 v3 c0 ×0.62\\n+ r40 v1 c2 ×0.38'."""
    parts = []
    for k in np.argsort(-weights, kind="stable"):
        if weights[k] < 0.005 and parts:
            continue
        ids = " ".join(f"{s}{int(v)}" for s, v in zip(names, labels[k], strict=False))
        parts.append(ids if len(weights) == 1 else f"{ids} ×{weights[k]:.2f}")
    return "\n+ ".join(parts)


def render_grid(images: np.ndarray, captions: Sequence[str], title: str, out: Union[str, Path]) -> Path:
    """Images [n, H, W] in [0, 1] with a caption under each, as a PNG written atomically."""
    from matplotlib.figure import Figure

    n = len(images)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    cell, line, pad = 1.5, 0.12, 0.08            # inches: image side, caption line, gap
    row_h = cell + line * max(c.count("\n") + 1 for c in captions) + pad
    width = cols * (cell + pad) + pad
    title = "\n".join(textwrap.fill(part, width=max(24, int(width * 15))) for part in title.split("\n"))
    head = 0.25 + 0.17 * (title.count("\n") + 1)
    height = rows * row_h + head
    fig = Figure(figsize=(width, height))
    fig.text(0.5, 1 - 0.1 / height, title, ha="center", va="top", fontsize=9)
    for i in range(n):
        r, c = divmod(i, cols)
        left, top = pad + c * (cell + pad), head + r * row_h
        ax = fig.add_axes((left / width, 1 - (top + cell) / height, cell / width, cell / height))
        ax.imshow(images[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        ax.text(0.5, -0.03, captions[i], transform=ax.transAxes, ha="center", va="top", fontsize=6,
                family="monospace", linespacing=1.2)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def _labels_for(data_dir: Path, ids: Sequence[str], targets: Targets) -> np.ndarray:
    df, labels = read_train_labels(data_dir / "train.csv", targets)
    row_of = {str(v): i for i, v in enumerate(df["image_id"].astype(str))}
    missing = [i for i in ids if i not in row_of]
    if missing:
        raise OkkhorError(f"{data_dir / 'train.csv'}: no labels for image_id {missing[0]} "
                          f"({len(missing)} cached images without labels)")
    return labels[[row_of[i] for i in ids]]


def preview(data_dir: Union[str, Path], out: Union[str, Path], aug: str = "medium", mix: str = "mixup", n: int = 32,
            size: Size = 64, seed: int = 0, aug_file: str = "", alpha: float = 1.0, k: int = 3,
            class_map: str = "") -> dict:
    """Write a grid of `n` training samples, augmented by `aug` (or `aug_file`) and mixed by `mix`, to `out`.

    Reuses or builds the prepare cache at `size`. Manifold mixing acts on features, so its grid shows the same
    weights applied to the images. Returns a summary (path, count, the mix kind drawn).
    """
    if aug not in AUG_PRESETS:
        raise OkkhorError(f"--aug {aug!r}: choose one of {', '.join(AUG_PRESETS)}")
    if mix not in MIX_KINDS:
        raise OkkhorError(f"--mix {mix!r}: choose one of {', '.join(MIX_KINDS)}")
    if not 1 <= n <= MAX_SAMPLES:
        raise OkkhorError(f"--n {n}: must be in 1..{MAX_SAMPLES}")
    if not alpha > 0:
        raise OkkhorError(f"--alpha {alpha}: must be > 0")
    if k < 2:
        raise OkkhorError(f"--k {k}: must be >= 2")
    data_dir = Path(data_dir)
    info = prepare(data_dir, size=size, splits=("train",), show_progress=False)["train"]
    images, ids = load_cache(Path(info["path"]).parent, "train")
    targets = load_targets(data_dir, class_map)
    rows = np.sort(np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False))
    labels = _labels_for(data_dir, [ids[r] for r in rows], targets)

    augment = build_augment(AugConfig(preset=aug, file=aug_file), size)  # type: ignore[arg-type]
    batch = np.stack([augment(np.asarray(images[r]), sample_seed(seed, 0, int(r))) if augment else images[r]
                      for r in rows])
    x, y = to_tensor(batch), torch.from_numpy(labels)
    plan = Mixer(MixConfig(kind=mix, alpha=alpha, k=k), seed=seed).plan(x.shape)  # type: ignore[arg-type]
    mixed, mt = (plan.apply(x), plan.targets(y)) if plan else (x, MixedTargets.unmixed(y))

    names = short_names(targets.names)
    captions = [caption(mt.labels[i].numpy(), mt.weights[i].numpy(), names) for i in range(len(rows))]
    drawn = plan.kind if plan else "none"
    title = f"aug={Path(aug_file).name if aug_file else aug}  mix={mix}"
    title += f" (drew {drawn})" if mix == "both" else ""
    title += f"  alpha={alpha:g}  size={size_text(size)}  seed={seed}  labels: {' '.join(names)}"
    if mix == "manifold":
        title += "\n(manifold mixes backbone features; shown: the same weights on the images)"
    path = render_grid(mixed[:, 0].numpy(), captions, title, out)
    return {"path": str(path), "count": len(rows), "mix": drawn}
