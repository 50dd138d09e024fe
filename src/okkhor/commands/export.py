"""`okkhor export` (not implemented yet)."""
from okkhor.errors import OkkhorError


def command() -> None:
    """Not implemented yet."""
    raise OkkhorError("okkhor export is not implemented yet")
