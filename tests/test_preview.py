"""`okkhor preview`: a PNG grid of augmented, mixed samples with their mixed labels."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from okkhor.cli import app
from okkhor.errors import OkkhorError
from okkhor.reporting.preview import caption, preview, short_names

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tiny_kaggle_dir):
    """One private copy for this module: the first preview builds its 32 px cache, the others reuse it."""
    return tiny_kaggle_dir(copy=True, n_train=24, n_test=0)


def test_caption_and_short_names():
    names = short_names(["grapheme_root", "vowel_diacritic", "consonant_diacritic"])
    assert names == ["r", "v", "c"]
    text = caption(np.array([[40, 1, 2], [12, 3, 0]]), np.array([0.38, 0.62]), names)
    assert text == "r12 v3 c0 ×0.62\n+ r40 v1 c2 ×0.38"
    assert caption(np.array([[5, 0, 1]]), np.array([1.0]), names) == "r5 v0 c1"
    assert short_names(["shape", "size"]) == ["shape", "size"]    # ambiguous first letters: full names


@pytest.mark.parametrize("aug,mix,n", [("medium", "mixup", 12), ("heavy", "dirichlet", 5)])
def test_preview_writes_a_png(data, tmp_path, aug, mix, n):
    out = tmp_path / "grid.png"
    result = preview(data.root, out, aug=aug, mix=mix, n=n, size=32, seed=1)
    assert result == {"path": str(out), "count": n, "mix": mix}
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert 5_000 < out.stat().st_size < 3_000_000
    height, width = imread(out).shape[:2]
    assert 150 < height < 1200 and 150 < width < 1400
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]    # no temporary file left behind
    again = tmp_path / "again.png"
    preview(data.root, again, aug=aug, mix=mix, n=n, size=32, seed=1)
    assert again.read_bytes() == out.read_bytes()                  # same seed, same picture


def test_preview_cli(data, tmp_path):
    out = tmp_path / "cli.png"
    runner = CliRunner()
    res = runner.invoke(app, ["preview", str(data.root), "--aug", "light", "--mix", "cutmix", "--n", "8",
                              "--size", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and out.read_bytes()[:8] == PNG_MAGIC
    bad = runner.invoke(app, ["preview", str(data.root), "--mix", "blend", "--out", str(out)])
    assert bad.exit_code == 2 and "--mix 'blend'" in bad.output and "Traceback" not in bad.output
    help_text = runner.invoke(app, ["preview", "--help"]).output
    assert "Examples" in help_text and "okkhor preview data/" in help_text


def test_preview_errors(data, tmp_path):
    with pytest.raises(OkkhorError, match="--aug"):
        preview(data.root, tmp_path / "x.png", aug="wild")
    with pytest.raises(OkkhorError, match="--n"):
        preview(data.root, tmp_path / "x.png", n=0)
    with pytest.raises(OkkhorError, match="nope.yaml"):
        preview(data.root, tmp_path / "x.png", aug_file=str(tmp_path / "nope.yaml"), size=32)
    with pytest.raises(OkkhorError, match="not found"):
        preview(tmp_path / "missing", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
