"""`okkhor prepare` throughput and peak RSS on both parquet layouts of 50,210 synthetic images (issue 15 / make bench).

Usage: python bench/prepare_bench.py [--rows 50210] [--size 128] [--workers N] [--layout row-groups|single]
                                     [--dir /tmp/okkhor-prepare-bench] [--pythonpath SRC]
Makes the images once with `okkhor synth` (okkhor's own synthetic handwriting, so they compress like images, not
like noise) and rewrites them as two files kept in --dir:
  row-groups  row groups of 4,096 rows (what okkhor's writer made before)
  single      one row group of all rows, dictionary-encoded: the competition's layout (pandas wrote each file in
              one piece)
Then runs `okkhor prepare` on each under /usr/bin/time -v and prints one JSON line: images per CPU second (user +
system time of the whole process, all its threads: the rate per core), images per wall second, and the peak
resident set size. --pythonpath measures another checkout's okkhor (e.g. an export of the previous commit's src).
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

LAYOUTS = {"row-groups": 4096, "single": None}  # rows per row group; None: one row group
SEED = 0
DATA_VERSION = 1  # bump when the way the files are made changes: they are then made again


def make_files(root: Path, rows: int) -> dict[str, Path]:
    """The data dir of each layout, made once (a marker names the rows and the version)."""
    from okkhor.io.kaggle import ImageFiles, ImageParquetWriter, image_parquet_files

    dirs = {name: root / f"{name}-{rows}" for name in LAYOUTS}
    marker = root / f".made-{rows}-v{DATA_VERSION}"
    if marker.is_file() and all((d / "train_image_data_0.parquet").is_file() for d in dirs.values()):
        return dirs
    synth = root / f"synth-{rows}-seed{SEED}"
    if not image_parquet_files(synth, "train"):
        cmd = [sys.executable, "-m", "okkhor", "synth", str(synth), "--train", str(rows), "--test", "0",
               "--seed", str(SEED), "--overwrite"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"synth failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(synth / "train.csv", d / "train.csv")
    with ImageParquetWriter(dirs["row-groups"] / "train_image_data_0.parquet", LAYOUTS["row-groups"]) as groups, \
            ImageParquetWriter(dirs["single"] / "train_image_data_0.parquet", LAYOUTS["single"]) as single:
        for ids, images in ImageFiles(image_parquet_files(synth, "train")).batches(4096):
            groups.write(ids, images)
            single.write(ids, images)  # held until the file closes: about 1.6 GB for 50,210 rows
    marker.touch()
    return dirs


def measure(data_dir: Path, size: int, workers: int | None, pythonpath: str | None = None) -> dict:
    """One `okkhor prepare` under /usr/bin/time -v: rates and peak RSS."""
    import pyarrow.parquet as pq

    cache = data_dir / "cache-bench"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "okkhor", "prepare", str(data_dir), "--size", str(size),
           "--out", str(cache)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    shutil.rmtree(cache, ignore_errors=True)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr).group(1)) for k in ("User", "System"))
    path = data_dir / "train_image_data_0.parquet"
    meta = pq.ParquetFile(path).metadata
    rows = meta.num_rows
    return {"images_per_cpu_s": round(rows / cpu, 1), "images_per_s": round(rows / wall, 1),
            "peak_rss_mb": round(rss_kb / 1024, 1), "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "row_groups": meta.num_row_groups, "file_mb": round(path.stat().st_size / 2**20, 1),
            "command": " ".join(["okkhor", *cmd[5:]])}


def run(rows: int = 50210, size: int = 128, workers: int | None = None, layouts: tuple[str, ...] = tuple(LAYOUTS),
        root: Path = Path("/tmp/okkhor-prepare-bench"), pythonpath: str | None = None) -> dict:
    dirs = make_files(root, rows)
    load = os.getloadavg()[0]
    out = {"prepare_rows": rows, "prepare_size": size, "prepare_workers": workers or "default",
           "prepare_load_before": round(load, 2), "cpu": cpu_model()}
    for name in layouts:
        out[name] = measure(dirs[name], size, workers, pythonpath)
    return out


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50210)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None, help="okkhor prepare --workers (default: its own)")
    ap.add_argument("--layout", action="append", choices=list(LAYOUTS), help="only this layout (repeatable)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/okkhor-prepare-bench"))
    ap.add_argument("--pythonpath", default=None, help="PYTHONPATH of the measured okkhor prepare")
    args = ap.parse_args()
    print(json.dumps(run(args.rows, args.size, args.workers, tuple(args.layout or LAYOUTS), args.dir,
                         args.pythonpath)))


if __name__ == "__main__":
    main()
