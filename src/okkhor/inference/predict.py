"""Inference: checkpoints (folds) x TTA views -> averaged softmax -> a Kaggle submission."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from okkhor.config import Config
from okkhor.data.prepare import preprocess
from okkhor.errors import OkkhorError
from okkhor.io import checkpoint
from okkhor.io.kaggle import ImageFiles, image_parquet_files
from okkhor.io.labels import load_targets, read_test_csv, read_train_labels, write_submission
from okkhor.models.graphemes import GRAPHEME, union_classes
from okkhor.models.graphemes import route as route_by_head
from okkhor.targets import Targets
from okkhor.training.distributed import resolve_device
from okkhor.training.step import Precision
from okkhor.utils.files import atomic_path, check_writable
from okkhor.utils.progress import progress
from okkhor.utils.sizes import Size, parse_size

# TTA views as (dx, dy, zoom): shifts in units of SHIFT_FRACTION of the image's width (dx) or height (dy), at
# least one pixel; zoom about the centre (>1 enlarges the ink). View 0 is the untouched input, so --tta 1 is plain
# inference.
TTA_VIEWS: tuple[tuple[int, int, float], ...] = (
    (0, 0, 1.0),
    (1, 0, 1.0), (-1, 0, 1.0), (0, 1, 1.0), (0, -1, 1.0),
    (0, 0, 0.92), (0, 0, 1.08),
    (1, 1, 1.0),
)
MAX_TTA = len(TTA_VIEWS)
SHIFT_FRACTION = 0.03
PRIOR_SMOOTHING = 1.0   # add-one smoothing of the class counts behind --prior-correction


@dataclass
class Member:
    """One loaded checkpoint of an ensemble: its model (eval mode, on its device), config and metadata."""

    path: Path
    model: torch.nn.Module
    cfg: Config
    targets: Targets
    meta: dict[str, Any]   # the checkpoint without its weights (okkhor.io.checkpoint.meta: train_class_counts, ...)

    @property
    def preprocessing(self) -> tuple[Size, bool]:
        """(image size: a side or (H, W), crop): the preprocessing this model was trained on (hashable)."""
        return parse_size(self.cfg.data.image_size), self.cfg.data.crop

    @property
    def graphemes(self) -> np.ndarray | None:
        """The label triples [G, T] of the model's grapheme head, or None without one."""
        classes = getattr(self.model, "grapheme_classes", None)
        return None if classes is None else classes.cpu().numpy()


def grapheme_space(members: Sequence[Member]) -> np.ndarray | None:
    """The union of the members' grapheme-head classes, the columns of the ensemble's grapheme probabilities."""
    sets = [m.graphemes for m in members if m.graphemes is not None]
    return union_classes(sets) if sets else None


def load_members(ckpts: Sequence[str | Path], device: str | torch.device = "auto") -> list[Member]:
    """Load checkpoints for inference; they must predict the same targets with the same class counts."""
    from okkhor.models.model import load_for_inference

    if not ckpts:
        raise OkkhorError("no checkpoint given")
    dev = resolve_device(device, key="--device")
    members: list[Member] = []
    for path in ckpts:
        model, cfg, targets, ckpt = load_for_inference(path)
        if members and (targets.names, targets.num_classes) != (members[0].targets.names,
                                                                 members[0].targets.num_classes):
            first = members[0]
            raise OkkhorError(f"{path}: predicts {_describe_targets(targets)} but {first.path} predicts "
                              f"{_describe_targets(first.targets)}; an ensemble needs the same targets")
        meta = checkpoint.meta(ckpt)
        layout = torch.channels_last if Precision.for_inference(dev).channels_last else torch.contiguous_format
        members.append(Member(Path(path), model.to(dev, memory_format=layout), cfg, targets, meta))
    return members


def check_data_targets(members: list[Member], data_dir: str | Path) -> None:
    """Refuse, in one line naming the checkpoint, a checkpoint of other targets than DATA_DIR/class_map.csv's:
    a target the class map lacks, or one with another class count (nothing to compare without a class map)."""
    class_map = Path(data_dir) / "class_map.csv"
    if not class_map.is_file():
        return
    full = load_targets(data_dir)
    counts = dict(zip(full.names, full.num_classes, strict=False))
    for member in members:
        for name, n in zip(member.targets.names, member.targets.num_classes, strict=False):
            if name not in counts:
                raise OkkhorError(f"{member.path}: predicts target {name}, which {class_map} does not have "
                                  f"({', '.join(full.names)}); a checkpoint of other targets")
            if counts[name] != n:
                raise OkkhorError(f"{member.path}: predicts {name} with {n} classes but {class_map} has "
                                  f"{counts[name]}; a checkpoint of other targets")


def _describe_targets(targets: Targets) -> str:
    return ", ".join(f"{n} ({c})" for n, c in zip(targets.names, targets.num_classes, strict=False))


READ_ROWS = 1024  # rows per parquet read


def check_tta(tta: int) -> None:
    if not 1 <= tta <= MAX_TTA:
        raise OkkhorError(f"--tta {tta}: must be in 1..{MAX_TTA} (view 1 is the plain image)")


def tta_view(x: torch.Tensor, view: int) -> torch.Tensor:
    """View `view` (index into TTA_VIEWS) of a float batch [B, C, H, W]; the background (0) fills what moves in."""
    dx, dy, zoom = TTA_VIEWS[view]
    if (dx, dy, zoom) == (0, 0, 1.0):
        return x
    h, w = x.shape[-2:]
    step_x, step_y = max(1, round(SHIFT_FRACTION * w)), max(1, round(SHIFT_FRACTION * h))
    # affine_grid maps output to input coordinates in [-1, 1]: moving the content by +d pixels reads from -d
    theta = torch.tensor([[1.0 / zoom, 0.0, -2.0 * dx * step_x / w],
                          [0.0, 1.0 / zoom, -2.0 * dy * step_y / h]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def ensemble_probs(members: Sequence[Member], images: dict[tuple[Size, bool], np.ndarray],
                   tta: int = 1, batch_size: int = 128, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Softmax averaged over members and TTA views: {target: float32 [n, C]}, plus {GRAPHEME: [n, G]} over
    grapheme_space(members) (averaged over the members that have a grapheme head) when any has one.

    `images` maps each member's preprocessing (size, crop) to uint8 images [N, H, W] (arrays or memory maps);
    `rows` picks the rows to predict (default all), read batch by batch so memory stays bounded.
    """
    check_tta(tta)
    if batch_size < 1:
        raise OkkhorError(f"--batch-size {batch_size}: must be >= 1")
    targets = members[0].targets
    n_total = len(next(iter(images.values())))
    rows = np.arange(n_total) if rows is None else np.asarray(rows, dtype=np.int64)
    space = grapheme_space(members)
    sums = [np.zeros((len(rows), c), dtype=np.float64) for c in targets.num_classes]
    if space is not None:
        sums.append(np.zeros((len(rows), len(space)), dtype=np.float64))
        column = {tuple(row): k for k, row in enumerate(space.tolist())}
    for member in members:
        source = images[member.preprocessing]
        precision = Precision.for_inference(next(member.model.parameters()).device)
        columns = (slice(None),) * len(targets) + (
            () if member.graphemes is None else (np.array([column[tuple(r)] for r in member.graphemes.tolist()]),))
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            x = precision.images(torch.from_numpy(np.ascontiguousarray(source[chunk])).unsqueeze(1))
            views = torch.cat([tta_view(x, view) for view in range(tta)]) if tta > 1 else x  # one forward
            with precision.autocast():
                logits = member.model(views)
            # per target: softmax, summed over the views on the device; then one host copy for the batch
            probs = [out.float().softmax(dim=1).view(tta, len(chunk), -1).sum(dim=0) for out in logits]
            host = torch.cat(probs, dim=1).double().cpu().numpy()
            edges = np.cumsum([0] + [p.shape[1] for p in probs])
            for t, cols in enumerate(columns):
                sums[t][start:start + len(chunk), cols] += host[:, edges[t]:edges[t + 1]]
    scale = 1.0 / (len(members) * tta)
    out = {name: (s * scale).astype(np.float32) for name, s in zip(targets.names, sums, strict=False)}
    if space is not None:
        out[GRAPHEME] = (sums[-1] / (sum(m.graphemes is not None for m in members) * tta)).astype(np.float32)
    return out


def raw_probs(members: Sequence[Member], raw: np.ndarray, tta: int = 1,
              batch_size: int = 128) -> dict[str, np.ndarray]:
    """Averaged probabilities for raw competition images uint8 [n, 137, 236]; members share equal preprocessing."""
    images = {prep: preprocess(raw, prep[0], prep[1]) for prep in {m.preprocessing for m in members}}
    return ensemble_probs(members, images, tta=tta, batch_size=batch_size)


def test_files(data_dir: str | Path) -> list[Path]:
    """The test parquet files of a data dir; none (or no dir) is one clear error."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise OkkhorError(f"{data_dir}: data directory not found")
    files = image_parquet_files(data_dir, "test")
    if not files:
        raise OkkhorError(f"{data_dir}: no test_image_data_*.parquet files")
    return files


def stream_test_probs(members: Sequence[Member], data_dir: str | Path, tta: int = 1, batch_size: int = 128,
                      show_progress: bool = True) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read DATA_DIR's test parquet files batch by batch and predict them: (image ids, {target: [n, C]})."""
    check_tta(tta)
    source = ImageFiles(test_files(data_dir), workers=None)  # column blocks over every CPU, memory bounded
    total = source.total
    probs: dict[str, np.ndarray] = {}
    ids: list[str] = []
    with progress(total=total, desc="predict", unit="img", disable=not show_progress) as bar:
        # the reader fills whole chunks column block by column block; preprocessing goes READ_ROWS rows at a time
        for batch_ids, raw in source.batches(max(batch_size, READ_ROWS)):
            batch = raw_probs(members, raw, tta=tta, batch_size=batch_size)
            for name, p in batch.items():  # the targets, and the grapheme head's when there is one
                probs.setdefault(name, np.zeros((total, p.shape[1]), dtype=np.float32))
                probs[name][len(ids):len(ids) + len(batch_ids)] = p
            ids.extend(batch_ids)
            bar.update(len(batch_ids))
    return ids, probs


def class_priors(members: Sequence[Member], data_dir: str | Path | None = None,
                 smoothing: float = PRIOR_SMOOTHING) -> dict[str, np.ndarray]:
    """Training class frequencies per target, add-`smoothing` smoothed and averaged over the members.

    They come from each checkpoint's `train_class_counts`; checkpoints without them fall back to the counts of
    DATA_DIR/train.csv.
    """
    targets = members[0].targets
    fallback: dict[str, np.ndarray] | None = None
    priors = {name: np.zeros(c, dtype=np.float64) for name, c in zip(targets.names, targets.num_classes, strict=False)}
    for member in members:
        counts = member.meta.get(checkpoint.CLASS_COUNTS)
        if not counts:
            if fallback is None:
                fallback = _train_csv_counts(targets, data_dir, member.path)
            counts = fallback
        for name, c in zip(targets.names, targets.num_classes, strict=False):
            row = np.asarray(counts.get(name, []), dtype=np.float64)
            if row.shape != (c,):
                raise OkkhorError(f"{member.path}: train_class_counts[{name}] has {row.size} entries, "
                                  f"expected {c}")
            row = row + smoothing
            priors[name] += row / row.sum()
    return {name: p / len(members) for name, p in priors.items()}


def _train_csv_counts(targets: Targets, data_dir: str | Path | None, ckpt: Path) -> dict[str, np.ndarray]:
    path = Path(data_dir) / "train.csv" if data_dir is not None else None
    if path is None or not path.is_file():
        raise OkkhorError(f"--prior-correction: {ckpt} has no train_class_counts and "
                          f"{path or 'DATA_DIR/train.csv'} is missing")
    _, labels = read_train_labels(path, targets)
    return {name: np.bincount(labels[:, t], minlength=c)
            for t, (name, c) in enumerate(zip(targets.names, targets.num_classes, strict=False))}


def decide(probs: dict[str, np.ndarray], priors: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Class per image and target: argmax of p, or of p / prior with prior correction (favours rare classes).
    The grapheme head's probabilities, when present, are not a target and are left out."""
    probs = {name: p for name, p in probs.items() if name != GRAPHEME}
    if priors is None:
        return {name: p.argmax(axis=1).astype(np.int64) for name, p in probs.items()}
    return {name: (p / priors[name][None, :]).argmax(axis=1).astype(np.int64) for name, p in probs.items()}


def routed_labels(members: Sequence[Member], probs: dict[str, np.ndarray], chosen: dict[str, np.ndarray],
                  threshold: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`--route`: images the ensemble's grapheme head is sure of (max probability >= threshold) take its triple,
    the others keep `chosen` (the component heads'). Returns (labels, routed mask)."""
    space = check_route(members, threshold)
    return route_by_head(chosen, probs[GRAPHEME], space, members[0].targets.names, threshold)


def check_route(members: Sequence[Member], threshold: float) -> np.ndarray:
    """The ensemble's grapheme classes, or one error line when --route cannot work (call before the long work)."""
    space = grapheme_space(members)
    if space is None:
        raise OkkhorError(f"--route: {members[0].path} has no grapheme head (train with model.grapheme_head=true)")
    if not 0.0 <= threshold <= 1.0:
        raise OkkhorError(f"--route-threshold {threshold}: must be in 0..1")
    return space


def _check_probs_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise OkkhorError(f"--probs {path}: the file name must end in .npz")
    return path


def save_probs(path: str | Path, image_ids: Sequence[str], probs: dict[str, np.ndarray]) -> Path:
    """An .npz with `image_ids` and one float32 [n, C] array per target, written atomically."""
    path = _check_probs_path(path)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, image_ids=np.asarray(image_ids, dtype=str), **probs)
    return path


def predict(ckpts: Sequence[str | Path], data_dir: str | Path, out: str | Path, tta: int = 1,
            probs: str | Path | None = None, batch_size: int = 128, prior_correction: bool = False,
            device: str = "auto", show_progress: bool = True, route: bool = False,
            route_threshold: float = 0.5) -> dict[str, Any]:
    """Predict DATA_DIR's test images with the averaged ensemble and write `row_id,target` in test.csv's order.

    With `route`, an image the grapheme head is sure of takes that head's triple (see routed_labels).
    Returns a summary: {"out", "probs", "images", "rows", "checkpoints", "tta", "prior_correction", "routed"}.
    """
    check_tta(tta)
    check_writable(out, "--out")
    if probs is not None:
        check_writable(_check_probs_path(probs), "--probs")
    data_dir = Path(data_dir)
    test_files(data_dir)
    members = load_members(ckpts, device)
    check_data_targets(members, data_dir)
    if route:
        check_route(members, route_threshold)
    targets = members[0].targets
    test = read_test_csv(data_dir / "test.csv", targets)
    priors = class_priors(members, data_dir) if prior_correction else None
    ids, p = stream_test_probs(members, data_dir, tta=tta, batch_size=batch_size, show_progress=show_progress)
    index = {image_id: i for i, image_id in enumerate(ids)}
    missing = [i for i in test["image_id"].astype(str) if i not in index]
    if missing:
        raise OkkhorError(f"{data_dir / 'test.csv'}: image {missing[0]} is in no test parquet file "
                          f"({len(set(missing))} missing)")
    labels = decide(p, priors)
    routed = None
    if route:
        labels, sure = routed_labels(members, p, labels, route_threshold)
        routed = int(sure.sum())
    rows = np.array([index[i] for i in test["image_id"].astype(str)], dtype=np.int64)
    values = np.empty(len(test), dtype=np.int64)
    for name in targets.names:
        mask = (test["component"] == name).to_numpy()
        values[mask] = labels[name][rows[mask]]
    write_submission(out, test["row_id"].astype(str).tolist(), values)
    if probs is not None:
        space = grapheme_space(members)
        save_probs(probs, ids, p if space is None else {**p, "grapheme_classes": space})
    return {"out": Path(out), "probs": Path(probs) if probs is not None else None, "images": len(ids),
            "rows": len(test), "checkpoints": len(members), "tta": tta, "prior_correction": prior_correction,
            "routed": routed}
