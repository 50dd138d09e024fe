"""`okkhor synth` (placeholder until the generator lands)."""
from okkhor.errors import OkkhorError


def command() -> None:
    """Not implemented yet."""
    raise OkkhorError("okkhor synth is not implemented yet")
