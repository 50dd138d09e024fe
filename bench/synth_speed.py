"""`okkhor synth` throughput: images/s over wall time and per CPU second, peak RSS (issue 3 / make bench).

Usage: python bench/synth_speed.py [--train 20000] [--test 0] [--workers N] [--style mix] [--compare font]
                                   [--dir /tmp/okkhor-synth-bench]
Runs `okkhor synth` in a subprocess and prints one JSON line, e.g. {"synth_images_per_s": 900.0, ...}.
`--compare font` also runs the same command with `--style font` right after, in the same invocation, and adds
its figures under "compare" with the ratio of the two rates.
The load average before the run is reported too: on a shared machine the wall rate is only a lower bound, and
images per CPU second (summed over the worker processes) is the steadier figure.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run(train: int = 20_000, test: int = 0, workers: int | None = None,
        root: Path = Path("/tmp/okkhor-synth-bench"), style: str = "mix") -> dict:
    shutil.rmtree(root, ignore_errors=True)
    okkhor = Path(sys.executable).with_name("okkhor")
    cmd = [str(okkhor), "synth", str(root), "--train", str(train), "--test", str(test),
           "--seed", "0", "--style", style]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"synth failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the synth process and its workers, all waited for
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rss_kb = after.ru_maxrss  # the largest single process
    shutil.rmtree(root, ignore_errors=True)
    n = train + test
    return {"synth_images_per_s": round(n / wall, 1), "synth_images_per_cpu_s": round(n / cpu, 1),
            "synth_images": n, "synth_seconds": round(wall, 2), "synth_cpus": os.cpu_count(),
            "synth_load_before": round(load, 2), "synth_peak_process_rss_mb": round(rss_kb / 1024, 1),
            "synth_summary": proc.stdout.strip().splitlines()[-1], "command": " ".join(["okkhor", *cmd[1:]]),
            "cpu": _cpu_model()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=20_000)
    ap.add_argument("--test", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/okkhor-synth-bench"))
    ap.add_argument("--style", default="mix", choices=["font", "hand", "mix"])
    ap.add_argument("--compare", default=None, choices=["font", "hand", "mix"],
                    help="also run this style right after, and report both")
    args = ap.parse_args()
    result = run(args.train, args.test, args.workers, args.dir, args.style)
    if args.compare:
        other = run(args.train, args.test, args.workers, args.dir, args.compare)
        result["compare"] = other
        result["rate_ratio"] = round(result["synth_images_per_s"] / other["synth_images_per_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
