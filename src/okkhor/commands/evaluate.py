"""`okkhor evaluate` (not implemented yet)."""
from okkhor.errors import OkkhorError


def command() -> None:
    """Not implemented yet."""
    raise OkkhorError("okkhor evaluate is not implemented yet")
