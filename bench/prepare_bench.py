"""Prepare throughput and peak RSS on one 50,210-row parquet of random 137x236 images (issue 2 / make bench).

Usage: python bench/prepare_bench.py [--rows 50210] [--size 128] [--dir /tmp/okkhor-prepare-bench] [--json]
Generates the parquet once (kept in --dir), then runs `okkhor prepare` under /usr/bin/time -v and reports
images/s per core (the prepare loop is single-threaded) and the peak resident set size.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_parquet(root: Path, rows: int, seed: int = 0) -> Path:
    from okkhor.data.kaggle import IMAGE_HEIGHT, IMAGE_WIDTH, write_image_parquet

    path = root / "train_image_data_0.parquet"
    marker = root / f".rows-{rows}-dictionary"  # rows and the writer's encoding: a change rewrites the file
    if path.is_file() and marker.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".rows-*"):  # the parquet is about to be replaced
        stale.unlink()
    rng = np.random.default_rng(seed)
    images = np.full((rows, IMAGE_HEIGHT, IMAGE_WIDTH), 250, dtype=np.uint8)
    # random strokes-like blobs so the crop has ink to find; noise everywhere so nothing compresses away
    images -= rng.integers(0, 6, images.shape, dtype=np.uint8)
    ys, xs = rng.integers(20, 100, rows), rng.integers(30, 180, rows)
    for i in range(rows):
        images[i, ys[i]:ys[i] + 30, xs[i]:xs[i] + 40] = rng.integers(0, 60)
    write_image_parquet(path, [f"Train_{i}" for i in range(rows)], images)
    marker.touch()
    return path


def run(rows: int = 50210, size: int = 128, root: Path = Path("/tmp/okkhor-prepare-bench")) -> dict:
    make_parquet(root, rows)
    cache = root / "cache-bench"
    shutil.rmtree(cache, ignore_errors=True)
    okkhor = Path(sys.executable).with_name("okkhor")
    cmd = ["/usr/bin/time", "-v", str(okkhor), "prepare", str(root), "--size", str(size), "--out", str(cache)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed: {proc.stderr.strip().splitlines()[-1]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr).group(1)) for k in ("User", "System"))
    shutil.rmtree(cache, ignore_errors=True)
    return {"prepare_rows": rows, "prepare_size": size, "prepare_seconds": round(wall, 2),
            "prepare_images_per_s": round(rows / wall, 1), "prepare_images_per_cpu_s": round(rows / cpu, 1),
            "prepare_peak_rss_mb": round(rss_kb / 1024, 1),
            "command": " ".join(cmd[2:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50210)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/okkhor-prepare-bench"))
    args = ap.parse_args()
    print(json.dumps(run(args.rows, args.size, args.dir)))


if __name__ == "__main__":
    main()
