#!/usr/bin/env bash
# One benchmark run on a lent GPU, done within 8 minutes: for seresnext50_32x4d (batch 128) and efficientnet_b0
# (batch 256) at 128 px with bf16 autocast and channels_last, okkhor's training images/s against a bare PyTorch
# loop (bench/run.py --only trainer_overhead), the peak memory of that run, and the largest micro-batch that fits
# (okkhor memory), okkhor's predict images/s (bench/run.py --only predict_speed), and the host reads of a training
# step (bench/sync_check.py: a plain micro-batch under torch.cuda.set_sync_debug_mode("error")). Writes one JSON
# object to $OUT/gpu-results.json when $OUT is set, else bench/gpu-results.json ($OKKHOR_GPU_RESULT overrides).
#
# Usage (repository root):   bash bench/gpu.sh
#                            bash bench/gpu.sh --dry-run   the same steps on the CPU at tiny sizes (a test runs it)
#   OKKHOR_BENCH_COMPILE=1   also torch.compile the model (both sides; the memory probe is skipped for time)
#   OKKHOR_BENCH_MODELS="efficientnet_b0:256"   model:batch pairs to run instead of the two above
# Missing pure-python dependencies (the GPU machine has torch, but maybe not ignite, timm, typer, pandas ...) are
# installed from wheels carried in .whl/ (made here by bench/gpu-wheels.sh): only those whose module does not
# import, into /tmp/site, put first on PYTHONPATH. albumentations is not needed: nothing here imports it.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
[ $# -eq 0 ] || { echo "usage: bash bench/gpu.sh [--dry-run]" >&2; exit 2; }
START=$(date +%s)
DEADLINE=$((START + 450))            # 7.5 minutes: leaves time to write the results inside 8
PY=${PY:-python3}
RESULT=${OUT:+$OUT/gpu-results.json}
RESULT=${OKKHOR_GPU_RESULT:-${RESULT:-bench/gpu-results.json}}
WORK=$(mktemp -d /tmp/okkhor-gpu.XXXXXX)
COMPILE=${OKKHOR_BENCH_COMPILE:-0}
MODELS=${OKKHOR_BENCH_MODELS:-"seresnext50_32x4d:128 efficientnet_b0:256"}
DEVICE=cuda SIZE=128 ITERS=20 ROUNDS=3 MEMORY_BATCHES=32,64,128,256 EFFECTIVE=512
if [ "$DRY" = 1 ]; then  # every step on the CPU at tiny sizes: checks the script, not the speed
  MODELS=${OKKHOR_BENCH_MODELS:-"resnet10t:4"} DEVICE=cpu SIZE=32 ITERS=1 ROUNDS=1 MEMORY_BATCHES=2,4 EFFECTIVE=8
  COMPILE=0
fi
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1

log() { echo "gpu.sh [$(( $(date +%s) - START ))s] $*"; }

# ---- dependencies
$PY -c 'import okkhor' 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c 'import ignite, timm, typer, pandas, yaml' 2>/dev/null; then
  if [ ! -f .whl/manifest.txt ]; then
    echo "gpu.sh: okkhor's dependencies are missing and there is no .whl/manifest.txt; run bash bench/gpu-wheels.sh" \
         "on the build machine and carry .whl" >&2
    exit 1
  fi
  wheels=()
  while read -r module wheel; do
    $PY -c "import $module" 2>/dev/null || wheels+=(".whl/$wheel")
  done < .whl/manifest.txt
  log "installing ${#wheels[@]} wheels into /tmp/site"
  if $PY -m pip --version >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/site "${wheels[@]}" || exit 1
  else  # no pip: a wheel is a zip archive laid out for site-packages
    $PY -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall("/tmp/site") for w in sys.argv[1:]]' "${wheels[@]}" \
      || exit 1
  fi
  export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c 'import okkhor.training.step, okkhor.models.model, okkhor.training.memory' || { echo "gpu.sh: okkhor does not import" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$WORK/gpu.txt" 2>/dev/null || true
[ "$DRY" = 1 ] && echo "dry run on the CPU" > "$WORK/gpu.txt"
log "device: $(cat "$WORK/gpu.txt" 2>/dev/null)"
$PY -m okkhor info --device "$DEVICE" --json > "$WORK/info.txt" 2>&1 || true

# ---- one step with a timeout that respects the deadline; its JSON (last stdout line) lands in $WORK/$name.json
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - $(date +%s) - 5))
  if [ "$left" -lt 30 ]; then
    echo "{\"skipped\": \"out of time ($left s left before the deadline)\"}" > "$WORK/$name.json"
    log "$name: skipped, out of time"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "$name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  local rc=$?
  if [ $rc -eq 0 ] && tail -n 1 "$WORK/$name.out" | $PY -c 'import json, sys; json.loads(sys.stdin.read())' 2>/dev/null; then
    tail -n 1 "$WORK/$name.out" > "$WORK/$name.json"
  else
    $PY -c 'import json, sys; print(json.dumps({"error": f"exit {sys.argv[1]}" + (" (timed out)" if sys.argv[1] in ("124", "137") else ""), "stderr_tail": open(sys.argv[2], errors="replace").read()[-1500:]}))' \
      "$rc" "$WORK/$name.err" > "$WORK/$name.json"
  fi
  log "$name: exit $rc"
}

COMPILE_FLAG=()
[ "$COMPILE" = 1 ] && COMPILE_FLAG=(--compile)
for pair in $MODELS; do
  model=${pair%%:*}
  batch=${pair##*:}
  step "overhead-$model" $([ "$COMPILE" = 1 ] && echo 220 || echo 130) \
    $PY bench/run.py --only trainer_overhead --device "$DEVICE" --model "$model" --size "$SIZE" --batch "$batch" \
    --amp bf16 --channels-last "${COMPILE_FLAG[@]}" --iters "$ITERS" --rounds "$ROUNDS" --json --no-write
  step "predict-$model" 40 $PY bench/run.py --only predict_speed --device "$DEVICE" --model "$model" \
    --size "$SIZE" --batch "$((batch * 2))" --json --no-write
  if [ "$COMPILE" != 1 ]; then
    step "memory-$model" 70 $PY -m okkhor memory --model "$model" --image-size "$SIZE" --precision bf16 \
      --device "$DEVICE" --channels-last --batches "$MEMORY_BATCHES" --effective-batch "$EFFECTIVE" --json
  fi
done
step "sync-check" 40 $PY bench/sync_check.py --device "$DEVICE"

# ---- one JSON object
mkdir -p "$(dirname "$RESULT")"
$PY - "$WORK" "$RESULT" "$START" "$COMPILE" "$DRY" "$SIZE" <<'EOF'
import json, pathlib, sys, time

work, result, start, compile_ = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dry, size = sys.argv[5] == "1", sys.argv[6]
out = {"gpu": (work / "gpu.txt").read_text().strip() if (work / "gpu.txt").is_file() else None, "dry_run": dry,
       "compile": compile_ == "1", "settings": f"{size} px, bf16 autocast, channels_last", "models": {}}
try:
    out["info"] = json.loads((work / "info.txt").read_text().strip().splitlines()[-1])
except (OSError, ValueError, IndexError):
    out["info"] = None
try:
    import torch
    out["torch"] = torch.__version__
except ImportError:
    pass
for path in sorted(work.glob("*.json")):
    kind, model = path.stem.split("-", 1)
    data = json.loads(path.read_text())
    if kind == "sync":
        out["sync_check"] = data
        continue
    entry = out["models"].setdefault(model, {})
    if kind == "predict":
        data = data.get("predict_speed", data)
        keep = ("value", "tta2_images_per_s", "setup", "reason", "error", "stderr_tail", "skipped")
        entry["predict_images_per_s"] = {k: data[k] for k in keep if k in data}
    elif kind == "overhead":
        data = data.get("trainer_overhead", data)
        keep = ("value", "wall_ratio", "okkhor_images_per_s", "bare_images_per_s", "round_ratios",
                "peak_memory_bytes", "setup", "command", "reason", "error", "stderr_tail", "skipped")
        entry["trainer_overhead"] = {k: data[k] for k in keep if k in data}
    else:
        keep = ("max_batch", "micro_batch", "accum", "effective_batch", "fixed_bytes", "per_sample_bytes",
                "optimizer_step_bytes", "batches", "measured_bytes", "predicted_bytes", "budget_bytes",
                "failed_batch", "notes", "error", "stderr_tail", "skipped")
        entry["memory"] = {k: data[k] for k in keep if k in data}
out["seconds"] = int(time.time()) - start
result.write_text(json.dumps(out, indent=1) + "\n")
for model, entry in out["models"].items():
    o, m = entry.get("trainer_overhead", {}), entry.get("memory", {})
    print(f"{model}: okkhor/bare {o.get('value')} ({o.get('okkhor_images_per_s')} vs {o.get('bare_images_per_s')} "
          f"img/s), peak {round(o.get('peak_memory_bytes', 0) / 2**30, 2)} GiB; largest micro-batch "
          f"{m.get('max_batch')} {o.get('error') or m.get('error') or ''}")
    print(f"  predict {entry.get('predict_images_per_s', {}).get('value')} img/s")
print(f"sync check: {out.get('sync_check')}")
print(f"wrote {result} in {out['seconds']} s")
EOF
rm -rf "$WORK"
