"""Weight averaging with torch's swa_utils: `okkhor average CKPT... --out FILE` and `train.swa_epochs` (SWA).

An averaged checkpoint holds config, targets, train_class_counts (of the first input) and `model` (the average of
each input's inference weights: EMA when the run kept them), plus `averaged_from`; predict, evaluate and export
read it like any other. Batch-norm statistics are averaged with the weights (AveragedModel(use_buffers=True)),
or recomputed on training images (update_bn) when asked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader

from okkhor.config import Config
from okkhor.errors import OkkhorError
from okkhor.io import checkpoint
from okkhor.targets import Targets
from okkhor.utils.files import check_writable

BN_BATCH = 64


# the batch-norm layers whose running statistics update_bn recomputes (timm's BatchNormAct2d is a BatchNorm2d)
BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, BATCH_NORMS) for m in model.modules())


def training_images_loader(data_dir: str | Path, cfg: Config, targets: Targets, log: Callable[[str], None] = print,
                           show_progress: bool = False, batch_size: int = BN_BATCH) -> DataLoader:
    """Unaugmented training images (the training fold of cfg's data.fold, at its preprocessing) of DATA_DIR."""
    from okkhor.data.dataset import GraphemeDataset
    from okkhor.data.sets import load_run_data

    data = load_run_data(data_dir, cfg, targets, log, show_progress)
    return DataLoader(GraphemeDataset(data.images, None, data.train_idx), batch_size=batch_size, shuffle=False)


def recompute_bn(model: torch.nn.Module, loader: DataLoader, device: torch.device | None = None) -> None:
    """Batch-norm running statistics of `model` recomputed over `loader` (torch.optim.swa_utils.update_bn); the
    loader's uint8 batches are scaled as the trainer scales them (data.dataset.normalize)."""
    from okkhor.data.dataset import normalize

    if has_batch_norm(model):
        was_training = model.training
        update_bn((normalize(x[0] if isinstance(x, (list, tuple)) else x) for x in loader), model, device)
        model.train(was_training)


def average_checkpoints(paths: Sequence[str | Path], out: str | Path, bn_data: str | Path | None = None,
                        log: Callable[[str], None] = print, show_progress: bool = False) -> dict[str, Any]:
    """Average the inference weights of CKPTS (same model, targets and grapheme classes) into OUT; with
    `bn_data` recompute the batch-norm statistics on that data dir's training images. Returns a summary."""
    from okkhor.models.model import load_for_inference, weights_mismatch

    if len(paths) < 1:
        raise OkkhorError("average: give at least one checkpoint")
    out = check_writable(out, "--out")
    if out.suffix != ".pt":
        raise OkkhorError(f"--out {out}: the file name must end in .pt")
    first, cfg, targets, first_ckpt = load_for_inference(paths[0])
    averaged = AveragedModel(first, use_buffers=True)
    averaged.update_parameters(first)
    for path in paths[1:]:
        model, other_cfg, other_targets, _ = load_for_inference(path)
        if other_cfg.model.name != cfg.model.name or other_targets != targets:
            raise OkkhorError(f"{path}: model {other_cfg.model.name} for {', '.join(other_targets.names)}, but "
                              f"{paths[0]} is {cfg.model.name} for {', '.join(targets.names)}; only checkpoints "
                              "of the same model and targets can be averaged")
        mismatch = weights_mismatch(first, model.state_dict())
        grapheme = getattr(first, "grapheme_classes", None)
        if not mismatch and grapheme is not None and not torch.equal(grapheme, model.grapheme_classes):
            mismatch = "other grapheme_classes"
        if mismatch:
            raise OkkhorError(f"{path}: its weights do not fit {paths[0]}'s: {mismatch}")
        averaged.update_parameters(model)
    net = averaged.module
    if bn_data is not None:
        recompute_bn(net, training_images_loader(bn_data, cfg, targets, log, show_progress))
    meta = {key: first_ckpt[key] for key in checkpoint.META_KEYS if key in first_ckpt}
    checkpoint.save(out, checkpoint.averaged(meta, net.state_dict(), [str(Path(p)) for p in paths],
                                             bn_data=str(bn_data) if bn_data is not None else ""))
    return {"out": out, "checkpoints": len(paths), "bn": bn_data is not None and has_batch_norm(net)}


class Swa:
    """train.swa_epochs K: after each of the last K epochs the trained weights join a running average
    (AveragedModel); when the run completes, batch norm is recomputed on the training images and
    checkpoints/swa.pt written. A checkpointed object (the average so far), so a resumed run goes on with it."""

    def __init__(self, net: torch.nn.Module, epochs: int, swa_epochs: int, bn_loader: Any, path: Path,
                 meta: dict[str, Any], device: torch.device, log: Callable[[str], None] = print):
        self.averaged = AveragedModel(net, use_buffers=True)
        self.net, self.first = net, epochs - swa_epochs + 1
        self.epochs, self.bn_loader, self.path, self.meta, self.device, self.log = (
            epochs, bn_loader, path, meta, device, log)

    def update(self, epoch: int) -> None:
        """EPOCH_COMPLETED of epoch `epoch`."""
        if epoch >= self.first:
            self.averaged.update_parameters(self.net)

    def finish(self, epoch: int) -> Path | None:
        """Write swa.pt when the run reached its last epoch with epochs averaged; None otherwise."""
        n = int(self.averaged.n_averaged)
        if epoch < self.epochs or n == 0:
            return None
        model = self.averaged.module
        recompute_bn(model, self.bn_loader, self.device)
        checkpoint.save(self.path, checkpoint.averaged(self.meta, {k: v.cpu() for k, v in model.state_dict().items()},
                                                       [f"epochs {self.first}..{epoch}"]))
        self.log(f"train: SWA of epochs {self.first}..{epoch} ({n} epochs) -> {self.path}")
        return self.path

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)
