"""Handwriting-like synthesis: per-glyph jitter, stroke re-inking, paper marks; determinism and ink inside the frame."""
from __future__ import annotations

import numpy as np
import pytest

from okkhor.io.kaggle import image_parquet_files, iter_image_parquet
from okkhor.sources.synth import hand
from okkhor.sources.synth.fonts import select_fonts
from okkhor.sources.synth.hand import HandStyle
from okkhor.sources.synth.imager import Imager
from okkhor.sources.synth.keys import image_rng
from okkhor.sources.synth.preview import iter_samples
from okkhor.sources.synth.shaping import FontRenderer
from okkhor.sources.synth.writer import synthesize

TEXTS = ("\u0995\u09cd\u09b7\u09cd\u09a3\u09cc", "\u09b0\u09cd\u0995\u09bf", "\u09b8\u09cd\u09a4\u09cd\u09b0\u09c0",
         "\u0995\u09c1", "\u0985")  # ক্ষ্ণৌ র্কি স্ত্রী কু অ


def _crop(a: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
    return a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


@pytest.fixture(scope="module")
def renderer():
    return FontRenderer(select_fonts()[0], em_px=100)


def test_compose_without_jitter_is_the_font_rendering(renderer):
    for text in TEXTS:
        placed = renderer.placed(text)
        assert np.array_equal(_crop(hand.compose(placed, np.zeros((len(placed), 4)))), renderer.render(text)), text


def test_jitter_moves_marks_against_a_fixed_base_within_its_ranges(renderer):
    style = HandStyle()
    placed = renderer.placed(TEXTS[0])
    assert len(placed) >= 3
    jitter = hand.glyph_jitter(placed, np.random.default_rng(5), style)
    assert np.array_equal(jitter, hand.glyph_jitter(placed, np.random.default_rng(5), style))
    base = int(np.argmax([b.size for b, _, _ in placed]))
    assert not jitter[base].any() and np.abs(np.delete(jitter, base, axis=0)).min() > 0
    height = renderer.render(TEXTS[0]).shape[0]
    assert np.abs(jitter[:, :2]).max() <= style.glyph_shift * height
    assert np.abs(jitter[:, 2]).max() <= style.glyph_scale
    assert np.abs(jitter[:, 3]).max() <= np.radians(style.glyph_rotate_deg)
    moved = hand.compose(placed, jitter)
    assert moved.max() == 255 and not np.array_equal(_crop(moved), renderer.render(TEXTS[0]))


def test_split_headlines_cuts_the_matra_off_as_its_own_piece():
    tee = np.zeros((40, 30), np.uint8)
    tee[2:6] = 255  # the headline: rows 2..5 across the whole width
    tee[6:, 12:18] = 255  # the stem
    dot = np.full((6, 6), 255, np.uint8)  # a mark below: no headline of its own
    pieces = hand.split_headlines([(tee, 10, 0), (dot, 44, 40)])
    assert len(pieces) == 3
    (body, bt, bl), (mark, mt, ml), (line, lt, ll) = pieces
    assert (bt, bl) == (10, 0) and not body[1:7].any() and np.array_equal(body[7:], tee[7:])
    assert mark is dot and (mt, ml) == (44, 40)
    assert (lt, ll) == (11, 0) and np.array_equal(line, tee[1:7])
    assert hand.split_headlines([(dot, 0, 0)])[0][0] is dot


def _bar(rows: int = 9) -> np.ndarray:
    img = np.zeros((40, 80), np.uint8)
    img[10:10 + rows, 8:72] = 255
    return img


def test_centreline_of_a_bar_is_its_middle_row():
    ridge = hand.centreline((_bar() > 127).astype(np.uint8))
    middle = ridge[:, 16:64]
    assert middle.any(axis=0).all()  # connected along the bar
    assert set(np.flatnonzero(middle.any(axis=1))) == {14}


def test_reink_draws_the_pen_width_and_leaves_gaps():
    steady = HandStyle(pen_vary=0.0, gaps=0.0)
    ink = hand.reink(_bar(), np.random.default_rng(0), steady, pen_px=2.0)
    assert ink.dtype == np.uint8 and ink.shape == (40, 80)
    assert ((ink[:, 16:64] > 127).sum(axis=0) == 5).all()  # rows 12..16: within 2.5 px of the centre row
    thin = hand.reink(_bar(15), np.random.default_rng(0), steady, pen_px=1.0)
    assert ((thin[:, 20:60] > 127).sum(axis=0) == 3).all()  # the font's width is gone, the pen's is drawn
    seed = next(k for k in range(100) if np.random.default_rng(k).poisson(1.0) == 1)  # one pen-lift
    gapped = hand.reink(_bar(), np.random.default_rng(seed), HandStyle(pen_vary=0.0, gaps=1.0, gap_px=(3.0, 3.0)), 2.0)
    drawn = (gapped > 127).any(axis=0)
    assert 2 <= (~drawn[12:68]).sum() <= 2 * 3 + 2  # one gap, 2 x 3 px beyond the pen's width, within the bar
    assert (gapped > 127).sum() >= 5 * 45


def test_crumbs_of_centreline_go_and_dots_of_their_own_stay():
    img = _bar()
    img[28:34, 38:44] = 255  # a dot of its own, below the bar (like the dot of ড়)
    mask = (img > 127).astype(np.uint8)
    ridge = hand.centreline(mask)
    spine = np.where(ridge, 0, 255).astype(np.uint8)
    end = np.flatnonzero(ridge[14])[-1]
    spine[:, end - 6:end - 2] = 255  # a gap near the bar's end leaves a crumb of 3 px
    hand.drop_crumbs(mask, spine, shortest=8, reach=2)
    left = spine == 0
    assert not left[:, end - 6:].any()  # the crumb is gone
    assert left[:20, 16:end - 6].any(axis=0).all()  # the long piece stays whole
    assert left[28:34, 38:44].any()  # the dot keeps its centreline
    ink = hand.reink(img, np.random.default_rng(0), HandStyle(gaps=0.0, pen_vary=0.0), pen_px=1.5)
    assert (ink[26:36, 36:46] > 127).any() and not (ink[20:26] > 127).any()  # the dot is drawn, apart from the bar


def test_paper_and_scan_marks_are_seeded_and_stay_in_range():
    style = HandStyle(artefacts=1.0)
    pages = []
    for _ in range(2):
        page = np.full((137, 236), 240.0, np.float32)
        hand.paper_marks(page, np.random.default_rng(3), style)
        pages.append(page)
    assert np.array_equal(*pages) and pages[0].min() < 230 and 150 < pages[0].min() and pages[0].max() <= 255
    image = np.full((137, 236), 240, np.uint8)
    hand.scan_marks(image, np.random.default_rng(3), style)
    assert (image != 240).any() and image.dtype == np.uint8


def test_hand_images_are_deterministic_and_keep_the_ink_inside_the_frame():
    imager = Imager(select_fonts(), hand=HandStyle(artefacts=0.0))
    for k, text in enumerate(TEXTS * 4):
        face = k % len(imager.renderers)
        img = imager(text, image_rng(0, "train", k), face, hand=True)
        assert np.array_equal(img, imager(text, image_rng(0, "train", k), face, hand=True))
        assert not np.array_equal(img, imager(text, image_rng(0, "train", k), face, hand=False))
        assert img.min() < 100 and (img < 128).mean() > 0.004, (k, text)  # not blank
        border = np.concatenate([img[:3].ravel(), img[-3:].ravel(), img[:, :3].ravel(), img[:, -3:].ravel()])
        assert border.min() > 200, (k, text)  # not clipped: no ink within 3 px of the edges


def test_hand_style_is_identical_whatever_the_workers(tmp_path):
    out = tmp_path / "hand"
    synthesize(out, 16, 0, seed=4, workers=2, rows_per_file=8, progress=False, style="hand")
    made = np.concatenate([batch for path in image_parquet_files(out, "train")
                           for _, batch in iter_image_parquet(path, batch_rows=256)])
    here = np.stack([image for _, image in iter_samples("train", 16, seed=4, style="hand")])
    assert np.array_equal(made, here)


def test_the_bend_field_keeps_even_its_largest_bends_inside_the_frame():
    fonts = select_fonts()
    straight = Imager(fonts, hand=HandStyle(artefacts=0.0, bend_px=0.0))
    bent = Imager(fonts, hand=HandStyle(artefacts=0.0, bend_px=20.0))
    for k, text in enumerate(TEXTS * 2):
        face = k % len(bent.renderers)
        img = bent(text, image_rng(1, "train", k), face, hand=True)
        assert not np.array_equal(img, straight(text, image_rng(1, "train", k), face, hand=True))
        assert img.min() < 100 and (img < 128).mean() > 0.004, (k, text)
        border = np.concatenate([img[:3].ravel(), img[-3:].ravel(), img[:, :3].ravel(), img[:, -3:].ravel()])
        assert border.min() > 200, (k, text)
    with pytest.raises(ValueError, match="bend_px"):
        HandStyle(bend_px=21.0)


def test_a_step_joins_the_hand_style_by_its_place_in_the_list():
    """The hand style is a list of steps on one Sheet: a step that draws nothing leaves the image as it was, and
    one that wipes the composed glyphs before the pose leaves a page without ink."""
    imager = Imager(select_fonts()[:1], hand=HandStyle(artefacts=0.0))
    before = imager(TEXTS[0], image_rng(0, "train", 5), 0, hand=True).copy()
    assert (before < 128).mean() > 0.01
    pose = [step.__name__ for step in imager.hand_steps].index("_pose")
    seen = []
    imager.hand_steps.insert(pose, lambda sheet: seen.append(sheet.src.shape))
    assert np.array_equal(imager(TEXTS[0], image_rng(0, "train", 5), 0, hand=True), before) and len(seen) == 1
    imager.hand_steps[pose] = lambda sheet: setattr(sheet, "src", np.zeros_like(sheet.src))
    wiped = imager(TEXTS[0], image_rng(0, "train", 5), 0, hand=True)
    assert wiped.min() > 150 and not np.array_equal(wiped, before)
