"""Letter-shape steps: strokes split at junctions, each step seeded, inside its reach, and changing the letter."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from helpers import assert_one_line_error, cli
from okkhor.errors import OkkhorError
from okkhor.io.kaggle import image_parquet_files, iter_image_parquet
from okkhor.sources.synth import shape
from okkhor.sources.synth.fonts import select_fonts
from okkhor.sources.synth.hand import HandStyle
from okkhor.sources.synth.imager import Imager
from okkhor.sources.synth.keys import image_rng
from okkhor.sources.synth.shape import STEP_NAMES
from okkhor.sources.synth.shape_style import PRESETS, ShapeStyle, parse_shape
from okkhor.sources.synth.shaping import FontRenderer

MARGIN = 16  # free band around every test image's ink: more than any step's reach
STEPS = dict(STEP_NAMES)
TEXTS = ("\u0995", "\u09a2\u09bc", "\u09a4\u09cd\u09b0", "\u0996\u09c1", "\u0985")  # ক ঢ় ত্র খু অ


def letter() -> np.ndarray:
    """A drawn letter with each feature a step needs: a loop with a stem hanging from it (a junction and a long
    free end), a bar whose end stops 3 px short of the loop, and a short tick (under min_stroke_px)."""
    m = MARGIN + 4  # the pen's edge stays out of the margin
    a = np.zeros((90 + 2 * m, 60 + 2 * m), np.uint8)
    cv2.circle(a, (m + 36, m + 35), 14, 255, 5, cv2.LINE_AA)
    cv2.line(a, (m + 50, m + 35), (m + 56, m + 85), 255, 5, cv2.LINE_AA)
    cv2.line(a, (m + 2, m + 12), (m + 18, m + 22), 255, 5, cv2.LINE_AA)
    cv2.line(a, (m + 16, m + 62), (m + 16, m + 68), 255, 5, cv2.LINE_AA)
    assert not a[:MARGIN].any() and not a[-MARGIN:].any() and not a[:, :MARGIN].any() and not a[:, -MARGIN:].any()
    return a


@pytest.fixture(scope="module")
def glyphs() -> list[np.ndarray]:
    """Font renderings of a few graphemes, about 60 px high, with MARGIN of paper around, and the drawn letter."""
    renderer = FontRenderer(select_fonts()[0], em_px=64)
    return [np.pad(renderer.render(t), MARGIN) for t in TEXTS] + [letter()]


def ink(a: np.ndarray) -> np.ndarray:
    return a > 127


def holes(a: np.ndarray) -> int:
    n, paper = cv2.connectedComponents((~ink(a)).view(np.uint8), connectivity=4)
    return n - 1 - np.unique(np.concatenate([paper[0], paper[-1], paper[:, 0], paper[:, -1]])).size


def pieces(a: np.ndarray) -> int:
    return cv2.connectedComponents(ink(a).view(np.uint8), connectivity=8)[0] - 1


def distance_to(a: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the ink of `a`."""
    return cv2.distanceTransform((~ink(a)).view(np.uint8), cv2.DIST_L2, 5)


# ----------------------------------------------------------------------------------------------- the analysis

def test_strokes_split_a_cross_at_its_junction_into_four_attached_arms():
    a = np.zeros((41, 41), np.uint8)
    a[18:23, 4:37] = 255
    a[4:37, 18:23] = 255
    s = shape.strokes(a)
    arms = np.flatnonzero(s.length)
    assert arms.size == 4 and s.attached[arms].all() and s.ends.size == 4
    assert (s.length[arms] >= 10).all()
    for k in arms:  # each arm turns about the middle of the cross
        assert np.abs(s.pivot[k] + (s.box[0].start, s.box[1].start) - 20).max() <= 4
    line = shape.chain(s, int(s.ends[0]))
    steps = np.abs(np.diff(s.points[line], axis=0)).max(axis=1)
    assert line.size == s.length[s.stroke[s.ends[0]]] and (steps == 1).all()  # one pixel at a time, every pixel
    assert shape.strokes(np.zeros((8, 8), np.uint8)) is None


# ----------------------------------------------------------------------------------------------- every step

@pytest.mark.parametrize("name", list(STEPS))
def test_step_is_seeded_stays_in_its_reach_and_changes_the_letter(name, glyphs):
    style, step = ShapeStyle(), STEPS[name]
    reach = style.step_reach(name)
    farthest = style.bridge_px / 2 if name == "close" else reach  # a bridge's middle: half the gap from either side
    changed = []
    for a in glyphs:
        out = step(a, np.random.default_rng(7), style, 1.0)
        assert out.dtype == np.uint8 and out.shape == a.shape
        assert np.array_equal(out, step(a, np.random.default_rng(7), style, 1.0))  # the rng is all it draws on
        band = MARGIN - int(np.ceil(reach))
        assert not out[:band].any() and not out[-band:].any() and not out[:, :band].any() and not out[:, -band:].any()
        assert (distance_to(a)[ink(out)] <= farthest + 1.5).all()  # no new ink farther off than the step draws it
        diff = int((ink(out) != ink(a)).sum())
        assert diff <= 0.5 * ink(a).sum()  # a changed letter, not another picture
        changed.append(diff)
    assert changed[-1] >= 10  # the drawn letter has what every step needs
    assert max(changed[:-1]) >= 10, changed  # and a font's letter at least once
    others = [step(a, np.random.default_rng(8), style, 1.0) for a in glyphs]
    assert any(not np.array_equal(o, step(a, np.random.default_rng(7), style, 1.0)) for o, a in zip(others, glyphs,
                                                                                                    strict=True))


@pytest.mark.parametrize("name", list(STEPS))
def test_step_copes_with_ink_at_the_image_edge(name):
    a = letter()
    for cut in (a[MARGIN + 10:, MARGIN + 6:], a[:MARGIN + 40, :MARGIN + 30], a[MARGIN + 20:MARGIN + 50]):
        for seed in range(3):
            out = STEPS[name](cut, np.random.default_rng(seed), ShapeStyle(), 1.0)
            assert out.shape == cut.shape and out.dtype == np.uint8
    speck, faint, blank = np.zeros((9, 9), np.uint8), np.zeros((9, 9), np.uint8), np.zeros((9, 9), np.uint8)
    speck[4, 4], faint[3:6, 3:6] = 255, 100
    for a in (speck, faint, blank) if name != "warp" else (blank,):  # no stroke to work on: the image as it was
        assert np.array_equal(STEPS[name](a, np.random.default_rng(0), ShapeStyle(), 1.0), a)


def test_trim_drops_part_of_a_free_end_and_leaves_short_strokes_whole():
    a, style = letter(), ShapeStyle()
    s = shape.strokes(a)
    ends = s.points[s.ends] + (s.box[0].start, s.box[1].start)
    tick = np.s_[MARGIN + 62:MARGIN + 77, MARGIN + 14:MARGIN + 27]
    for seed in range(6):
        out = shape.trim_end(a, np.random.default_rng(seed), style)
        gone = ink(a) & ~ink(out)
        assert not (ink(out) & ~ink(a)).any() and gone.sum() >= 5
        ys, xs = np.nonzero(gone)
        near = np.hypot(ys[:, None] - ends[:, 0], xs[:, None] - ends[:, 1]).min(axis=0)
        assert near.min() <= style.trim_px + 4 and np.ptp(ys) <= 20 and np.ptp(xs) <= 20  # one end, not much of it
        assert np.array_equal(out[tick], a[tick]) and a[tick].sum() > 20 * 255


def test_extend_draws_a_free_end_on_and_removes_nothing():
    a, style = letter(), ShapeStyle()
    for seed in range(4):
        out = shape.extend_end(a, np.random.default_rng(seed), style)
        added = ink(out) & ~ink(a)
        assert (out >= a).all() and added.sum() >= 5
        assert distance_to(a)[added].max() >= 2.0  # drawn on, past the old end


def test_open_cuts_the_loop_and_close_joins_the_bar_to_it():
    a = letter()
    assert holes(a) == 1 and pieces(a) == 3
    opened = shape.open_loop(a, np.random.default_rng(0), ShapeStyle(), pen=1.0)
    assert holes(opened) == 0 and (opened <= a).all()
    closed = shape.close_gap(a, np.random.default_rng(0), ShapeStyle())
    assert pieces(closed) == 2 and (closed >= a).all() and holes(closed) == 1


def test_move_turns_a_stroke_about_its_joint_and_warp_moves_ink_a_few_pixels():
    a, style = letter(), ShapeStyle()
    for seed in range(4):
        moved = shape.move_stroke(a, np.random.default_rng(seed), style)
        assert abs(int(ink(moved).sum()) - int(ink(a).sum())) <= 0.2 * ink(a).sum()
        assert (distance_to(moved)[ink(a)] <= style.move_px + 1.5).all()  # and nothing lost on the way
        warped = shape.tps_warp(a, np.random.default_rng(seed), style)
        assert (distance_to(warped)[ink(a)] <= style.warp_px + 1.5).all()
        assert 0.1 * ink(a).sum() <= (ink(warped) != ink(a)).sum()  # strokes move a little


def test_apply_runs_the_steps_by_their_chances():
    a = letter()
    off = PRESETS["none"]
    rng = np.random.default_rng(3)
    assert shape.apply_shape(a, rng, off) is a and not off.active and off.reach == 0
    assert rng.random() == _after_draws(3, len(STEP_NAMES)).random()  # one draw per step, whatever runs
    only_trim = parse_shape("trim=1")
    assert np.array_equal(shape.apply_shape(a, np.random.default_rng(3), only_trim),
                          shape.trim_end(a, _after_draws(3, len(STEP_NAMES)), only_trim))
    every = parse_shape("strong")
    assert np.array_equal(shape.apply_shape(a, np.random.default_rng(4), every),
                          shape.apply_shape(a, np.random.default_rng(4), every))


def _after_draws(seed: int, n: int) -> np.random.Generator:
    rng = np.random.default_rng(seed)
    rng.random(n)
    return rng


# ----------------------------------------------------------------------------------------------- settings

def test_parse_shape_presets_and_settings():
    assert parse_shape("none") is None and parse_shape("") is None
    assert parse_shape("mild") == ShapeStyle()
    warp = parse_shape("warp=0.5, warp_grid=5x7")
    assert (warp.warp, warp.warp_grid, warp.move, warp.trim) == (0.5, (5, 7), 0.0, 0.0)
    assert warp.reach == warp.warp_px
    assert parse_shape("mild,trim=0").trim == 0.0 and parse_shape("mild,trim=0").move == ShapeStyle().move
    assert parse_shape("strong").reach > ShapeStyle().reach
    for spec, needle in (("wobbly", "unknown preset 'wobbly'"), ("twist=1", "unknown setting 'twist'"),
                         ("warp=lots", "warp=lots"), ("trim=2", "ShapeStyle.trim"), ("warp_grid=1x9", "warp_grid")):
        with pytest.raises(OkkhorError, match=needle):
            parse_shape(spec)
    with pytest.raises(ValueError, match="ShapeStyle.move_px"):
        ShapeStyle(move_px=-1)


# ----------------------------------------------------------------------------------------------- in the imager

def test_the_imager_changes_only_the_shape_and_keeps_the_ink_inside_the_frame():
    fonts, hand = select_fonts(), HandStyle(artefacts=0.0)
    plain, trimmed = Imager(fonts, hand=hand), Imager(fonts, hand=hand, shape=parse_shape("trim=1"))
    strong = Imager(fonts, hand=hand, shape=PRESETS["strong"])
    assert Imager(fonts[:1], shape=PRESETS["none"]).shape is None
    changed = 0
    for k, text in enumerate(TEXTS * 3):
        face, rng = k % len(fonts), lambda: image_rng(9, "train", k)  # noqa: B023 (called in this iteration only)
        before, after = plain(text, rng(), face, hand=True), trimmed(text, rng(), face, hand=True)
        moved = np.abs(before.astype(int) - after) > 60
        changed += moved.any()
        assert moved.mean() < 0.02  # a trimmed end: the pose, pen and page draw what they drew without it
        assert np.array_equal(plain(text, rng(), face), trimmed(text, rng(), face))  # the font style: untouched
        img = strong(text, rng(), face, hand=True)
        assert np.array_equal(img, strong(text, rng(), face, hand=True))
        assert img.min() < 100 and (img < 128).mean() > 0.004
        band = int(plain.variation.margin_px) - 2
        assert min(img[:band].min(), img[-band:].min(), img[:, :band].min(), img[:, -band:].min()) > 200
    assert changed >= 10


def test_synth_with_shape_gives_the_same_files_whatever_the_workers(tmp_path):
    args = ["--train", "12", "--test", "4", "--seed", "3", "--style", "hand", "--rows-per-file", "4", "--shape",
            "strong"]
    for workers in ("1", "2"):
        code, output = cli("synth", tmp_path / workers, *args, "--workers", workers)
        assert code == 0, output
    files = sorted(p.name for p in (tmp_path / "1").glob("*.parquet"))
    assert files == sorted(p.name for p in (tmp_path / "2").glob("*.parquet")) and len(files) == 4
    for f in files:
        assert (tmp_path / "1" / f).read_bytes() == (tmp_path / "2" / f).read_bytes(), f
    made = np.concatenate([b for path in image_parquet_files(tmp_path / "1", "train")
                           for _, b in iter_image_parquet(path, batch_rows=64)])
    assert made.shape == (12, 137, 236) and (made < 128).mean(axis=(1, 2)).min() > 0.004  # ink on every page


def test_synth_shape_option_errors(tmp_path):
    code, output = cli("synth", tmp_path / "a", "--train", "2", "--test", "0", "--shape", "mild,wobble=1")
    assert_one_line_error(code, output, "--shape", "unknown setting 'wobble'")
    code, output = cli("synth", tmp_path / "b", "--train", "2", "--test", "0", "--shape", "mild", "--style", "font")
    assert_one_line_error(code, output, "--shape changes hand-style images only")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
