"""Fit a stylizer: CycleGAN (LSGAN, cycle and identity losses, Adam) between synthetic and real glyph crops."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from okkhor.data.prepare import PrepareOptions, default_cache_dir, load_cache, prepare_split
from okkhor.errors import OkkhorError
from okkhor.sources.stylize.stylizer import StylizeOptions, build_nets, save_stylizer
from okkhor.utils.files import check_writable
from okkhor.utils.progress import progress

LOSSES = ("gan", "cycle", "identity", "disc")


def domain_images(data_dir: str | Path, size: int, what: str, show_progress: bool = True) -> np.ndarray:
    """A data dir's training images as okkhor prepare crops them: uint8 [n, size, size], bright ink on black
    (memory-mapped from the prepare cache, which is built or reused at DATA_DIR/cache/<size>)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise OkkhorError(f"{what} {data_dir}: data directory not found")
    opts = PrepareOptions(size=size)
    cache = default_cache_dir(data_dir, opts)
    prepare_split(data_dir, "train", opts, cache, show_progress=show_progress)
    images, _ = load_cache(cache, "train")
    if not len(images):
        raise OkkhorError(f"{what} {data_dir}: no training images")
    return images


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 crops [n, s, s] -> float [n, 1, s, s] in [-1, 1]."""
    return torch.from_numpy(np.array(crops, dtype=np.float32)).div_(127.5).sub_(1.0).unsqueeze_(1)


class ImagePool:
    """CycleGAN's history of generated images: once full, each new image is, with probability 1/2, swapped for a
    stored one, so that a discriminator also sees older fakes. Draws from its own torch.Generator."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator, self.images = size, generator, []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images.detach()
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.generator) < 0.5:
                k = int(torch.randint(self.size, (), generator=self.generator))
                out.append(self.images[k])
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)


def _lsgan(scores: torch.Tensor, target: float) -> torch.Tensor:
    scores = scores.float()
    return F.mse_loss(scores, torch.full_like(scores, target))


class CycleStep:
    """One CycleGAN step on a batch of synthetic images `a` and real images `b`: the generators' update (LSGAN +
    cycle + identity losses), then the discriminators' (real against pooled fakes, halved). Returns the losses."""

    def __init__(self, nets: dict[str, nn.Module], opts: StylizeOptions, generator: torch.Generator):
        self.nets, self.opts = nets, opts
        gens = [*nets["synth_to_real"].parameters(), *nets["real_to_synth"].parameters()]
        discs = [*nets["disc_real"].parameters(), *nets["disc_synth"].parameters()]
        self.opt_g = torch.optim.Adam(gens, lr=opts.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(discs, lr=opts.lr, betas=(0.5, 0.999))
        half = opts.steps // 2   # CycleGAN: a constant rate, then a linear decay to zero

        def rate(step: int) -> float:
            return 1.0 if step < half else max(0.0, (opts.steps - step) / (opts.steps - half + 1))

        self.schedules = [torch.optim.lr_scheduler.LambdaLR(o, rate) for o in (self.opt_g, self.opt_d)]
        self.pool_real, self.pool_synth = ImagePool(opts.pool, generator), ImagePool(opts.pool, generator)

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.opts.bf16 else contextlib.nullcontext()

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        g_ab, g_ba = self.nets["synth_to_real"], self.nets["real_to_synth"]
        d_b, d_a = self.nets["disc_real"], self.nets["disc_synth"]
        o = self.opts
        for d in (d_a, d_b):
            d.requires_grad_(False)
        with self._autocast():
            fake_b, fake_a = g_ab(a), g_ba(b)
            gan = _lsgan(d_b(fake_b), 1.0) + _lsgan(d_a(fake_a), 1.0)
            cycle = F.l1_loss(g_ba(fake_b).float(), a) + F.l1_loss(g_ab(fake_a).float(), b)
            identity = torch.zeros(())
            if o.identity_weight > 0:
                identity = F.l1_loss(g_ab(b).float(), b) + F.l1_loss(g_ba(a).float(), a)
            loss = gan + o.cycle_weight * (cycle + o.identity_weight * identity)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        for d in (d_a, d_b):
            d.requires_grad_(True)
        pooled_b, pooled_a = self.pool_real(fake_b), self.pool_synth(fake_a)
        with self._autocast():
            disc = 0.5 * (_lsgan(d_b(b), 1.0) + _lsgan(d_b(pooled_b), 0.0) + _lsgan(d_a(a), 1.0)
                          + _lsgan(d_a(pooled_a), 0.0))
        self.opt_d.zero_grad(set_to_none=True)
        disc.backward()
        self.opt_d.step()
        for s in self.schedules:
            s.step()
        return {"gan": gan.item(), "cycle": cycle.item(), "identity": identity.item(), "disc": disc.item()}


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise OkkhorError(f"--threads {threads}: must be at least 1")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` intra-op threads (None: torch's default), then restore the previous number."""
    if threads is None:
        yield
        return
    check_threads(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_stylizer(real_dir: str | Path, synth_dir: str | Path, out: str | Path, opts: StylizeOptions,
                 show_progress: bool = True, threads: int | None = 1,
                 on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict:
    """Learn a synthetic -> real translator from the training images of two data dirs and save it to `out`.

    The same options (seed included) give the same file on the same machine: the networks start from
    torch.manual_seed(seed), and batches and the image pools draw from a torch.Generator seeded from it.
    `threads`: torch's intra-op threads for the fit (None: torch's default, one per core). 1 by default: these
    networks' operations are small, and on a machine that other work keeps busy every extra thread waits at each
    operation's barrier (measured on 2 busy cores: 4.3 steps/s with 1 thread, 0.9 with 2).
    Returns a summary: images of each domain, steps, seconds, steps/s and the mean losses of the first and last
    tenth of the steps.
    """
    check_threads(threads)
    out = check_writable(out, "--out")
    real = domain_images(real_dir, opts.size, "--real", show_progress)
    synth = domain_images(synth_dir, opts.size, "--synth", show_progress)
    torch.manual_seed(opts.seed)
    nets = build_nets(opts)
    for net in nets.values():
        net.train()
    generator = torch.Generator().manual_seed(opts.seed)
    step = CycleStep(nets, opts, generator)
    history: dict[str, list[float]] = {k: [] for k in LOSSES}
    start = time.perf_counter()
    with torch_threads(threads), \
            progress(total=opts.steps, desc="stylize fit", unit="step", disable=not show_progress) as bar:
        for i in range(opts.steps):
            ia = torch.randint(len(synth), (opts.batch,), generator=generator).numpy()
            ib = torch.randint(len(real), (opts.batch,), generator=generator).numpy()
            losses = step(to_tensor(synth[ia]), to_tensor(real[ib]))
            for k, v in losses.items():
                history[k].append(v)
            if on_step is not None:
                on_step(i, losses)
            bar.update()
            if i % 10 == 0 or i == opts.steps - 1:
                bar.set_postfix(**{k: f"{v:.3f}" for k, v in losses.items()})
    seconds = time.perf_counter() - start
    data = {"real": str(real_dir), "synth": str(synth_dir), "real_images": len(real), "synth_images": len(synth)}
    save_stylizer(out, opts, nets, history, data)
    tenth = max(1, opts.steps // 10)
    return {"out": str(out), **data, "steps": opts.steps, "seconds": round(seconds, 2),
            "steps_per_s": round(opts.steps / seconds, 3) if seconds > 0 else None,
            "first": {k: float(np.mean(v[:tenth])) for k, v in history.items()},
            "last": {k: float(np.mean(v[-tenth:])) for k, v in history.items()}}
