"""`okkhor preview` (not implemented yet)."""
from okkhor.errors import OkkhorError


def command() -> None:
    """Not implemented yet."""
    raise OkkhorError("okkhor preview is not implemented yet")
