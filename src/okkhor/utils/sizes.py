"""Image sizes: a square side (128) or a height and width (128x224, [128, 224]) for `data.image_size` and
`okkhor prepare --size`. One canonical form: an int when square, else an (H, W) tuple."""
from __future__ import annotations

from typing import Any, Union

Size = Union[int, tuple[int, int]]
MIN_SIDE = 16


def parse_size(value: Any) -> Size:
    """128, "128", "128x224", [128, 224] or (128, 224) -> 128 or (128, 224); [S, S] becomes S. ValueError when it
    is none of these or a side is not a positive integer."""
    if isinstance(value, str):
        parts = value.strip().lower().replace(" ", "").split("x")
        if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{value!r}: expected a side (128) or HxW (128x224)")
        value = [int(p) for p in parts]
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            value = value[0]
        elif len(value) != 2:
            raise ValueError(f"{value!r}: expected [H, W]")
    sides = value if isinstance(value, (list, tuple)) else (value,)
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, int) or side < 1:
            raise ValueError(f"{value!r}: sides must be positive integers")
    if len(sides) == 1 or sides[0] == sides[1]:
        return int(sides[0])
    return int(sides[0]), int(sides[1])


def hw(size: Any) -> tuple[int, int]:
    """(height, width) of any form parse_size takes."""
    size = parse_size(size)
    return (size, size) if isinstance(size, int) else size


def size_text(size: Any) -> str:
    """"128" for a square, "128x224" otherwise: the cache folder's name and the log's."""
    size = parse_size(size)
    return str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"


def yaml_value(size: Any) -> int | list[int]:
    """The form a config file holds: 128 or [128, 224]."""
    size = parse_size(size)
    return size if isinstance(size, int) else list(size)


def size_option(value: Any, flag: str = "--size") -> Size:
    """parse_size for a command-line option: a bad value or a side under MIN_SIDE is one OkkhorError naming `flag`."""
    from okkhor.errors import OkkhorError

    try:
        size = parse_size(value)
    except ValueError as exc:
        raise OkkhorError(f"{flag} {exc}") from None
    if min(hw(size)) < MIN_SIDE:
        raise OkkhorError(f"{flag} {size_text(size)}: each side must be at least {MIN_SIDE}")
    return size
