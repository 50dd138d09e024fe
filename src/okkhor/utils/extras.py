"""okkhor's optional parts (pip extras): one clear line, naming the pip command, when one is not installed."""
from __future__ import annotations

import importlib.util

from okkhor.errors import OkkhorError

# extra -> (import name, distribution) of the modules it brings that okkhor imports
EXTRAS = {
    "synth": (("uharfbuzz", "uharfbuzz"), ("freetype", "freetype-py")),
    "serve": (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("multipart", "python-multipart"), ("PIL", "pillow")),
}


def missing(extra: str) -> list[str]:
    """Distributions of `extra` whose modules cannot be found (nothing is imported)."""
    return [dist for module, dist in EXTRAS[extra] if importlib.util.find_spec(module) is None]


def require(extra: str, what: str) -> None:
    """Raise one OkkhorError line when `extra` is not installed: `what` needs it, and how to install it."""
    absent = missing(extra)
    if absent:
        raise OkkhorError(f"{what} needs the optional extra '{extra}' ({', '.join(absent)} not installed): "
                          f"pip install okkhor[{extra}]")
