"""`--shape`'s settings: the chances and strengths of the shape steps, their presets and the parser of the option.

Light (no numpy): the CLI's help and checks read it; okkhor.sources.synth.shape runs the steps."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from okkhor.errors import OkkhorError

# the steps in the order okkhor.sources.synth.shape.apply_shape runs them (the warp last)
STEPS = ("trim", "extend", "open", "close", "move", "warp")

HELP = ("Letter shapes beyond the fonts, in the hand-style images: none (default), mild or strong, and NAME=VALUE "
        "settings applied after them, comma-separated (a setting alone turns on only its step: warp=0.5). Steps, "
        "each NAME its chance per image: move (turn and stretch a stroke about its joint), warp (thin-plate spline, "
        "warp_grid=4x6 control points), trim (drop a stroke's free end), extend (draw one on), open (cut a loop), "
        "close (bridge a gap to a stroke); strengths: {strengths} (pixels of the 137 x 236 image).")


@dataclass(frozen=True)
class ShapeStyle:
    """Chances and strengths of the shape steps; a step whose chance is 0 is off. Lengths in output pixels."""

    move: float = 0.3  # chance of turning and stretching one stroke about the joint it hangs from
    move_deg: float = 12.0  # +- its rotation
    move_stretch: float = 0.2  # +- log of its scale
    move_px: float = 5.0  # and no ink pixel moves farther than this
    warp: float = 0.3  # chance of a thin-plate-spline warp of the letter
    warp_grid: tuple[int, int] = (4, 6)  # its control points: rows x columns over the ink's box
    warp_px: float = 3.0  # +- displacement of each control point
    trim: float = 0.15  # chance of dropping the free end of one stroke
    trim_share: float = 0.4  # at most this share of the stroke (between its end and its joint)
    trim_px: float = 10.0  # and at most this long
    extend: float = 0.15  # chance of drawing one stroke on past its free end
    extend_px: float = 7.0  # by up to this much
    extend_deg: float = 15.0  # +- turn of the extension against the stroke's direction
    open: float = 0.1  # chance of cutting a gap into a closed loop
    gap_px: float = 2.0  # the gap's length beyond the pen's width
    close: float = 0.1  # chance of joining a free stroke end to a nearby stroke
    bridge_px: float = 6.0  # across a gap of at most this much
    min_stroke_px: float = 8.0  # strokes shorter than this (dots, serifs, ridge noise) are never changed

    def __post_init__(self) -> None:
        for name in STEPS:
            _check(name, getattr(self, name), 0.0, 1.0)
        limits = {"move_deg": 45.0, "move_stretch": 1.0, "move_px": 12.0, "warp_px": 10.0, "trim_share": 0.9,
                  "trim_px": 30.0, "extend_px": 15.0, "extend_deg": 90.0, "gap_px": 10.0, "bridge_px": 15.0,
                  "min_stroke_px": 100.0}
        for name, hi in limits.items():
            _check(name, getattr(self, name), 0.0, hi)
        g = self.warp_grid
        if (not isinstance(g, tuple) or len(g) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               and 2 <= v <= 16 for v in g)):
            raise ValueError(f"ShapeStyle.warp_grid must be (rows, columns), each an integer in 2..16, got {g!r}")

    def step_reach(self, name: str) -> float:
        """How far the new ink of step `name` may lie outside the input ink's box."""
        return {"move": self.move_px, "warp": self.warp_px, "extend": self.extend_px, "close": 1.0}.get(name, 0.0)

    @property
    def reach(self) -> float:
        """How far new ink may lie outside the input ink's box, the steps that are on all taken (0: all off)."""
        return sum(self.step_reach(name) for name in STEPS if getattr(self, name) > 0)

    @property
    def active(self) -> bool:
        return any(getattr(self, name) > 0 for name in STEPS)


def _check(name: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"ShapeStyle.{name} must be a number in {lo}..{hi}, got {value!r}")


PRESETS = {"none": ShapeStyle(**{name: 0.0 for name in STEPS}), "mild": ShapeStyle(),
           "strong": ShapeStyle(move=0.5, warp=0.5, trim=0.25, extend=0.25, open=0.2, close=0.2, move_deg=18.0,
                                move_px=7.0, warp_px=4.0, extend_px=10.0, bridge_px=8.0)}


def parse_shape(spec: str) -> ShapeStyle | None:
    """`--shape`: comma-separated preset names (none, mild, strong) and NAME=VALUE settings of ShapeStyle fields,
    applied left to right on `none` (so `warp=0.5` is the warp alone); None when every step is off."""
    style = PRESETS["none"]
    kinds = {f.name: f.type for f in fields(ShapeStyle)}
    for item in (p.strip() for p in spec.split(",")):
        if not item:
            continue
        if "=" not in item:
            if item not in PRESETS:
                raise OkkhorError(f"--shape: unknown preset {item!r} (presets: {', '.join(PRESETS)})")
            style = PRESETS[item]
            continue
        key, _, text = (p.strip() for p in item.partition("="))
        if key not in kinds:
            raise OkkhorError(f"--shape: unknown setting {key!r} (settings: {', '.join(kinds)})")
        try:
            value = (tuple(int(v) for v in text.split("x")) if key == "warp_grid" else float(text))
            style = replace(style, **{key: value})
        except ValueError as e:
            raise OkkhorError(f"--shape: {key}={text}: {e}") from None
    return style if style.active else None


def shape_help() -> str:
    """--shape's help text, its strength names read from ShapeStyle."""
    strengths = [f.name for f in fields(ShapeStyle) if f.name not in STEPS and f.name != "warp_grid"]
    return HELP.format(strengths=", ".join(strengths))
