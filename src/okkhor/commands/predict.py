"""`okkhor predict` (not implemented yet)."""
from okkhor.errors import OkkhorError


def command() -> None:
    """Not implemented yet."""
    raise OkkhorError("okkhor predict is not implemented yet")
