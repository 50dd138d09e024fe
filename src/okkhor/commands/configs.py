"""`okkhor configs`: list the config presets shipped with okkhor."""
from __future__ import annotations

import typer


def command() -> None:
    """List the presets that `okkhor train --config NAME` takes, each with its purpose.

    Examples:
      okkhor configs
      okkhor train --config demo-cpu --print-config
    """
    from okkhor.presets import presets

    shipped = presets()
    width = max(len(p.name) for p in shipped)
    for p in shipped:
        typer.echo(f"{p.name:<{width}}  {p.purpose}")
