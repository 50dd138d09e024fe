"""`okkhor report` (not implemented yet)."""
from okkhor.errors import OkkhorError


def command() -> None:
    """Not implemented yet."""
    raise OkkhorError("okkhor report is not implemented yet")
