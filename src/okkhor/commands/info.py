"""`okkhor info`: the device, its bf16 capability and the precision `train.amp: auto` picks there."""
from __future__ import annotations

import json

import typer


def command(
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of lines."),
) -> None:
    """Print the device a run would use, whether it runs bf16 fast (and why: CUDA compute capability, or the
    CPU flags AMX-BF16 / AVX512-BF16), and what `train.amp: auto` and `train.channels_last: auto` choose there.

    Examples:
      okkhor info
      okkhor info --device cpu --json
    """
    from okkhor.training.distributed import resolve_device
    from okkhor.utils.devices import describe

    info = describe(resolve_device(device, key="--device"))
    if as_json:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"device: {info['device']} ({info['name']}; torch {info['torch']}, {info['threads']} threads)")
    typer.echo(f"bf16: {'fast' if info['bf16_fast'] else 'slow'} ({info['bf16_reason']})")
    typer.echo(f"train.amp auto: {info['auto_precision']}")
    typer.echo(f"train.channels_last auto: {'on' if info['channels_last_auto'] else 'off'}")
