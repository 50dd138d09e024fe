"""`okkhor memory`: peak training-step memory at a few batch sizes, a fitted line, the micro-batch that fits."""
from __future__ import annotations

import json
from typing import Optional

import typer


def command(
    model: str = typer.Option(..., "--model", help="timm model name, e.g. resnet18, efficientnet_b0."),
    image_size: str = typer.Option(..., "--image-size", metavar="S|HxW",
                                   help="Side of the square training image in pixels, or HEIGHTxWIDTH (64x112)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16 (fp16: CUDA only)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto (cuda when available)."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Memory to fit in, e.g. 6GB, 6GiB, 512MB (default: "
                                                                "free CUDA memory, or available RAM on CPU)."),
    effective_batch: int = typer.Option(0, "--effective-batch", help="Batch to reach with gradient accumulation "
                                                                     "(0: report the largest micro-batch only)."),
    batches: str = typer.Option("", "--batches", help="Batch sizes to measure, comma-separated (default: 2,4,8,16 "
                                                      "on CPU, 16,32,64,128 on CUDA)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Channels-last memory format, as "
                                                                      "train.channels_last."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Measure peak training-step memory (forward, loss, backward, AdamW step) at a few batch sizes, fit
    fixed + per-sample bytes, and print the largest micro-batch that fits the budget (90% of it is used) with the
    accumulation steps that reach --effective-batch.

    CUDA: torch.cuda.max_memory_allocated. CPU: peak anonymous RSS of a fresh process per batch size. The
    forward/backward peak gets the fitted line; the optimizer step's peak (no activations) is a floor under it.

    Examples:
      okkhor memory --model resnet18 --image-size 64
      okkhor memory --model efficientnet_b0 --image-size 128 --precision bf16 --device cuda --effective-batch 512
      okkhor memory --model seresnext50_32x4d --image-size 128 --budget 6GiB --batches 8,16,32 --json
    """
    from okkhor.errors import OkkhorError
    from okkhor.training.memory import HEADROOM, default_budget, format_bytes, parse_bytes, plan_batch, probe
    from okkhor.utils.sizes import size_text

    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()] if batches.strip() else None
    except ValueError:
        raise OkkhorError(f"--batches {batches!r}: expected comma-separated integers, e.g. 2,4,8,16") from None
    if effective_batch < 0:
        raise OkkhorError(f"--effective-batch {effective_batch}: must be >= 0")
    limit = parse_bytes(budget) if budget is not None else None

    def show(batch: int, peak: Optional[int]) -> None:
        if not as_json:
            typer.echo(f"  batch {batch}: {format_bytes(peak) if peak is not None else 'out of memory'}", err=True)

    fit = probe(model, image_size, precision, device, sizes, channels_last=channels_last, progress=show)
    source = "--budget"
    if limit is None:
        limit, source = default_budget(fit.device)
    largest = fit.max_batch(limit)
    micro, accum = plan_batch(largest, effective_batch) if largest else (0, 0)
    if as_json:
        typer.echo(json.dumps({**fit.to_dict(), "budget_bytes": limit, "budget_source": source, "headroom": HEADROOM,
                               "max_batch": largest, "effective_batch": effective_batch, "micro_batch": micro,
                               "accum": accum}))
        return
    typer.echo(f"{fit.model} at {size_text(fit.image_size)} px, {fit.precision} on {fit.device} ({fit.method})")
    typer.echo(f"{'batch':>6}  {'measured':>12}  {'predicted':>12}  {'error':>7}")
    for b, peak in zip(fit.batches, fit.peaks, strict=False):
        pred = fit.predict(b)
        typer.echo(f"{b:>6}  {format_bytes(peak):>12}  {format_bytes(pred):>12}  {(pred - peak) / peak:>+7.1%}")
    typer.echo(f"fit: forward/backward {format_bytes(fit.fixed_bytes)} + {format_bytes(fit.per_sample_bytes)} per "
               f"sample; optimizer step {format_bytes(fit.optimizer_bytes)}; predicted = the larger")
    for note in fit.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"budget: {format_bytes(limit)} ({source}), {HEADROOM:.0%} usable")
    if not largest:
        raise OkkhorError(f"{fit.model} at {size_text(fit.image_size)} px needs {format_bytes(fit.predict(1))} at "
                          f"batch 1; it does not fit {format_bytes(limit)}")
    typer.echo(f"largest micro-batch that fits: {largest}")
    if effective_batch:
        typer.echo(f"effective batch {effective_batch}: micro-batch {micro} x accum {accum} "
                   f"(train.batch_size={micro} train.accum={accum})")
    else:
        typer.echo(f"suggested micro-batch: {micro} (train.batch_size={micro})")
