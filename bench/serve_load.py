"""`okkhor serve` under load (issue 23): throughput and latency of concurrent clients beside okkhor predict's rate.

Usage: python bench/serve_load.py [--clients 16] [--requests 200] [--distinct 200] [--model resnet10t]
                                  [--size 64] [--dir /tmp/okkhor-serve-bench] [--no-unbatched] [--json OUT]
                                  [--markdown bench/RESULTS.md]
Makes a checkpoint of the demo's model (resnet10t, 64 px, random init: the rate does not depend on the weights)
and --distinct PNG files from `okkhor synth` test images (a third of them scaled to other sizes, a sixth made light
on dark), then:
  predict   the clients x requests files, imported with `okkhor import` (one folder, so image k is file k), run
            through okkhor.inference.predict.predict() in this process: images/s = images / its wall time
            (reading the parquet file, preprocessing, the forward passes, writing the submission), of the second
            call (the first, cold one is reported too: it pays for torch choosing its kernels)
  forward   predict's inference alone (raw_probs, batches of 128) on those pages in memory: no files, no HTTP
  serve     `python -m okkhor serve CKPT --no-access-log` in its own process; each of --clients threads sends
            --requests POST /predict requests one after another, one PNG each (multipart, keep-alive): images/s
            over the whole run, latency p50 / p99 per request
  unbatched the same with --max-batch 1 (one forward pass per request), to show what batching buys
Each rate is given per wall second and per CPU second (user + system time of the process doing the work, all its
threads: the server's process for serve, not the clients'): on a machine shared with other work the wall rates
move with the load and the CPU-second rates much less, so the ratios of CPU-second rates are the steadier ones.
Every answer is checked against predict's submission for the same file (labels) and probabilities (top-1 within
1e-5); the run counts lost requests (no 200 answer) and wrong ones. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

BOUNDARY = "okkhorbench"
ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def make_checkpoint(path: Path, model: str, size: int) -> Path:
    """A checkpoint as the trainer writes it: the Bengali targets (168/11/7), random init."""
    import torch

    from okkhor.config import Config
    from okkhor.models.model import build_model
    from okkhor.targets import Targets

    targets = Targets.from_class_map()
    cfg = Config()
    cfg.data.image_size, cfg.model.name = size, model
    torch.manual_seed(0)
    net = build_model(cfg.model, targets)
    torch.save({"config": cfg.to_dict(), "targets": targets.to_dict(), "model": net.state_dict(), "ema": None},
               path)
    return path


def make_files(root: Path, distinct: int, total: int) -> list[bytes]:
    """`distinct` PNG files from okkhor synth test images, varied in size and polarity; request k sends file
    k % distinct, and IMAGES/a/<k>.png holds all `total` of them for okkhor import."""
    import cv2

    from okkhor.io.kaggle import iter_image_parquet
    from okkhor.sources.synth.generate import synthesize

    synth = root / "synth"
    synthesize(synth, n_train=0, n_test=distinct, seed=0, overwrite=True, progress=False)
    pages = np.concatenate([raw for _, raw in iter_image_parquet(synth / "test_image_data_0.parquet")])
    files = []
    for k, page in enumerate(pages):
        img = page
        if k % 3 == 1:
            img = cv2.resize(img, (472, 274), interpolation=cv2.INTER_LINEAR)
        elif k % 3 == 2:
            img = cv2.resize(img, (177, 103), interpolation=cv2.INTER_AREA)
        if k % 6 == 5:
            img = 255 - img
        files.append(cv2.imencode(".png", img)[1].tobytes())
    folder = root / "images" / "a"
    shutil.rmtree(root / "images", ignore_errors=True)
    folder.mkdir(parents=True)
    for k in range(total):
        (folder / f"{k:06d}.png").write_bytes(files[k % distinct])
    return files


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process, all its threads (this one by default; Linux's /proc for another)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_predict(root: Path, ckpt: Path, total: int) -> tuple[tuple[float, float], tuple[float, float], dict]:
    """((images per wall second, per CPU second) of predict() in a fresh process's first call, the same for the
    next call (warm: torch's kernels chosen, as the server is after its warm-up), its probabilities per target
    [total, C] in request order)."""
    import pandas as pd

    from okkhor.inference.predict import predict
    from okkhor.sources.imagefolder import import_image_folder

    labels = root / "map.csv"
    pd.DataFrame({"folder": ["a"], "grapheme_root": [0], "vowel_diacritic": [0],
                  "consonant_diacritic": [0]}).to_csv(labels, index=False)
    data = root / "imported"
    shutil.rmtree(data, ignore_errors=True)
    import_image_folder(root / "images", data, labels, split="test", show_progress=False, warn=lambda line: None)
    rates = []
    for _ in range(2):
        start, cpu = time.perf_counter(), cpu_seconds()
        predict([ckpt], data, root / "submission.csv", probs=root / "probs.npz", show_progress=False, device="cpu")
        rates.append((total / (time.perf_counter() - start), total / (cpu_seconds() - cpu)))
    probs = np.load(root / "probs.npz")
    assert probs["image_ids"].tolist() == [f"Test_{k}" for k in range(total)]
    return rates[0], rates[1], {k: probs[k] for k in probs.files if k != "image_ids"}


def run_forward(root: Path, ckpt: Path) -> tuple[float, float]:
    """Images per wall and per CPU second of predict's inference alone (raw_probs: preprocessing and forward
    passes of 128) on the imported pages already in memory: no file reading and no HTTP, an upper bound for both."""
    from okkhor.inference.predict import load_members, raw_probs
    from okkhor.io.kaggle import iter_image_parquet

    pages = np.concatenate([raw for _, raw in iter_image_parquet(root / "imported" / "test_image_data_0.parquet")])
    members = load_members([ckpt], "cpu")
    raw_probs(members, pages[:256], batch_size=128)   # warm-up
    start, cpu = time.perf_counter(), cpu_seconds()
    raw_probs(members, pages, batch_size=128)
    return len(pages) / (time.perf_counter() - start), len(pages) / (cpu_seconds() - cpu)


def body_of(png: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def start_server(ckpt: Path, port: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "okkhor", "serve", str(ckpt), "--port", str(port),
                             "--device", "cpu", "--no-access-log", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"okkhor serve exited: {proc.stdout.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("okkhor serve did not answer /health within 120 s")


def load(port: int, bodies: list[bytes], clients: int, requests: int, want: dict[str, np.ndarray]) -> dict:
    """Every client sends `requests` requests in turn; returns rates, latency percentiles and the checks."""
    latencies = np.zeros(clients * requests)
    lost, wrong = [0] * clients, [0] * clients
    names = ("grapheme_root", "vowel_diacritic", "consonant_diacritic")
    go = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        go.wait()
        for j in range(requests):
            k = c * requests + j
            started = time.perf_counter()
            try:
                conn.request("POST", "/predict", bodies[k % len(bodies)],
                             {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
                response = conn.getresponse()
                payload = response.read()
            except OSError:
                lost[c] += 1
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            latencies[k] = time.perf_counter() - started
            if response.status != 200:
                lost[c] += 1
                continue
            (answer,) = json.loads(payload)["predictions"]
            for name in names:
                label, p = answer[name]["top"][0]
                if label != int(want[name][k].argmax()) or abs(p - float(want[name][k].max())) > 1e-5:
                    wrong[c] += 1
                    break

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    done = latencies[latencies > 0] * 1000
    return {"images_per_s": round(clients * requests / seconds, 1), "seconds": round(seconds, 2),
            "p50_ms": round(float(np.percentile(done, 50)), 1), "p99_ms": round(float(np.percentile(done, 99)), 1),
            "max_ms": round(float(done.max()), 1), "lost": sum(lost), "wrong": sum(wrong)}


def bad_requests(png: bytes) -> list[tuple[str, bytes, str]]:
    """(what, body, content type) of requests the server must refuse with a 4xx."""
    import cv2

    def form(*parts: tuple[str, bytes]) -> bytes:
        out = b"".join(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                       f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                       for name, data in parts)
        return out + f"--{BOUNDARY}--\r\n".encode()

    multipart = f"multipart/form-data; boundary={BOUNDARY}"
    blank = cv2.imencode(".png", np.full((137, 236), 250, np.uint8))[1].tobytes()
    huge = cv2.imencode(".png", np.zeros((4097, 4096), np.uint8))[1].tobytes()
    return [("not an image", form(("a.txt", b"hello")), multipart), ("empty file", form(("e.png", b"")), multipart),
            ("blank image", form(("b.png", blank)), multipart),
            ("truncated", form(("t.png", png[:len(png) // 2])), multipart),
            ("huge image", form(("h.png", huge)), multipart),
            ("too many images", form(*[(f"{i}.png", png) for i in range(33)]), multipart),
            ("body over 8 MiB", b"x" * ((8 << 20) + 1), multipart), ("wrong content type", png, "text/plain"),
            ("bad base64", json.dumps({"images": ["@@"]}).encode(), "application/json"),
            ("no images", json.dumps({"images": []}).encode(), "application/json")]


def refuse(port: int, png: bytes) -> dict:
    """Each bad request once: its status; then whether /health still answers."""
    statuses = {}
    for what, body, kind in bad_requests(png):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/predict", body, {"Content-Type": kind})
            response = conn.getresponse()
            text = response.read()
            one_line = response.status < 500 and b"\n" not in text and list(json.loads(text)) == ["error"]
            statuses[what] = response.status if one_line else f"{response.status} (not one JSON error line)"
        except OSError as exc:
            statuses[what] = f"no answer ({exc})"
    return {"statuses": statuses, "all_4xx": all(isinstance(v, int) and 400 <= v < 500 for v in statuses.values()),
            "health_after": health(port).get("status") == "ok"}


def health(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_run(ckpt: Path, bodies: list[bytes], args, want: dict[str, np.ndarray], extra: list[str],
              bodies_png: bytes | None = None) -> dict:
    """One server process under the load; then, given a PNG, the bad requests (refuse())."""
    port = free_port()
    proc = start_server(ckpt, port, extra)
    try:
        load(port, bodies[:32], min(args.clients, 4), 8, want)   # warm-up: first forward passes, connections
        before, cpu = health(port), cpu_seconds(proc.pid)
        result = load(port, bodies, args.clients, args.requests, want)
        after, cpu = health(port), cpu_seconds(proc.pid) - cpu
        refused = refuse(port, bodies_png) if bodies_png else None
    finally:
        proc.send_signal(2)
        proc.communicate(timeout=60)
    forwards = after["forwards"] - before["forwards"]
    result.update(images_per_cpu_s=round(args.clients * args.requests / cpu, 1), forwards=forwards,
                  mean_batch=round((after["images"] - before["images"]) / max(forwards, 1), 1),
                  largest_batch=after["largest_batch"])
    if refused is not None:
        result["bad_input"] = refused
    return result


SECTION = "## okkhor serve under load (bench/serve_load.py)"


def markdown(r: dict, command: str) -> str:
    """The RESULTS.md section of one run."""
    s, u = r["serve"], r.get("unbatched")
    bad = s.get("bad_input", {})
    statuses = bad.get("statuses", {})
    refused = sum(isinstance(v, int) and 400 <= v < 500 for v in statuses.values())
    n = r["clients"] * r["requests_per_client"]
    rows = [
        (f"throughput under {r['clients']} clients / okkhor predict's images/s",
         f"{r['ratio']:.3f} ({s['images_per_s']:.1f} / {r['predict_images_per_s']:.1f} images/s)", ">= 0.7",
         "yes" if r["ratio"] >= 0.7 else "**no**"),
        ("the same per CPU second (server process / predict)", f"{r['cpu_ratio']:.3f} ({s['images_per_cpu_s']:.1f} / "
         f"{r['predict_images_per_cpu_s']:.1f})", "reported", "-"),
        ("latency per request p50 / p99 (max)", f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} ms ({s['max_ms']:.0f} ms)",
         "p99 stated", "-"),
        ("requests lost / answered wrongly", f"{s['lost']} / {s['wrong']} of {n:,}", "0 / 0",
         "yes" if s["lost"] == s["wrong"] == 0 else "**no**"),
        ("batching: forward passes, mean / largest batch", f"{s['forwards']}, {s['mean_batch']} / "
         f"{s['largest_batch']} images", "reported", "-"),
        ("bad inputs answered 4xx, /health after them",
         f"{refused} of {len(statuses)}, {'ok' if bad.get('health_after') else 'no'}", "all, ok",
         "yes" if bad.get("all_4xx") and bad.get("health_after") else "**no**"),
    ]
    if u:
        rows.append(("without batching (--max-batch 1)", f"{u['images_per_s']:.1f} images/s "
                     f"({u['images_per_cpu_s']:.1f} per CPU s), p50 / p99 {u['p50_ms']:.0f} / {u['p99_ms']:.0f} ms",
                     "reported", "-"))
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}` on {r['cpu']}, "
             f"{r['cpus']} CPUs ({r['torch_threads']} torch threads), load average {r['load_average'][0]} after "
             f"(a machine shared with other work: wall rates move with its load, per-CPU-second rates much less). "
             f"{r['model']}; {r['clients']} clients x {r['requests_per_client']} requests of one PNG each (multipart, "
             "keep-alive) against `okkhor serve --no-access-log` in its own process; every answer compared with "
             "okkhor predict's for the same file (labels, top-1 probability within 1e-5). okkhor predict: the "
             "same files through `okkhor import`, predict() timed on its second call (the first, cold call: "
             f"{r['predict_cold_images_per_s']:.1f} images/s); predict's inference alone on the pages in memory: "
             f"{r['forward_images_per_s']:.1f} images/s ({r['forward_images_per_cpu_s']:.1f} per CPU second).", "",
             "| figure | value | goal | met |", "|---|---|---|---|",
             *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
             "", f"Bad inputs (status each): {json.dumps(statuses)}"]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace this bench's section of `path` (from its heading to the next '## ' heading), or append it."""
    from okkhor.utils.files import write_text_atomic

    old = path.read_text() if path.is_file() else ""
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[end + 1:] if end >= 0 else "")
    write_text_atomic(path, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200, help="requests per client, one image each")
    ap.add_argument("--distinct", type=int, default=200, help="distinct image files")
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/okkhor-serve-bench"))
    ap.add_argument("--no-unbatched", action="store_true", help="skip the --max-batch 1 run")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--markdown", type=Path, help="write (or replace) this bench's section of this file, e.g. "
                                                  "bench/RESULTS.md")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    args.dir.mkdir(parents=True, exist_ok=True)
    total = args.clients * args.requests
    ckpt = make_checkpoint(args.dir / "bench.pt", args.model, args.size)
    files = make_files(args.dir, args.distinct, total)
    (cold, _), (rate, rate_cpu), want = run_predict(args.dir, ckpt, total)
    forward, forward_cpu = run_forward(args.dir, ckpt)
    bodies = [body_of(files[k % len(files)]) for k in range(total)]
    result = {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "model": f"{args.model} {args.size} px, random init", "clients": args.clients,
              "requests_per_client": args.requests, "predict_images_per_s": round(rate, 1),
              "predict_images_per_cpu_s": round(rate_cpu, 1), "predict_cold_images_per_s": round(cold, 1),
              "forward_images_per_s": round(forward, 1), "forward_images_per_cpu_s": round(forward_cpu, 1),
              "serve": serve_run(ckpt, bodies, args, want, [], files[0])}
    if not args.no_unbatched:
        result["unbatched"] = serve_run(ckpt, bodies, args, want, ["--max-batch", "1"])
    result["ratio"] = round(result["serve"]["images_per_s"] / rate, 3)
    result["cpu_ratio"] = round(result["serve"]["images_per_cpu_s"] / rate_cpu, 3)
    result["cpu_ratio_to_forward"] = round(result["serve"]["images_per_cpu_s"] / forward_cpu, 3)
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if args.markdown:
        write_section(args.markdown, markdown(result, "python bench/serve_load.py " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    main()
