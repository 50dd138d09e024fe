#!/usr/bin/env bash
# Download the wheels bench/gpu.sh installs on a lent GPU machine (which has torch but not all of okkhor's
# dependencies and cannot reach PyPI) into .whl/, at the versions installed in .venv, for CPython $PYVER
# (default 3.12) on manylinux x86_64. Writes .whl/manifest.txt ("module wheel-file" per line); gpu.sh installs the
# wheels of the modules that do not import there. Then carry .whl (it is git-ignored) with the run.
#
# Usage: bash bench/gpu-wheels.sh            (from anywhere in the repository; about 57 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
DEST=.whl
mkdir -p "$DEST"

# distribution  module-it-provides   (the import chain of bench/run.py's timed training and `okkhor memory`;
# albumentations, opencv and iterative-stratification are left out: that path does not import them)
PACKAGES="
pytorch-ignite ignite
timm timm
huggingface_hub huggingface_hub
safetensors safetensors
hf-xet hf_xet
httpx2 httpx2
httpcore2 httpcore2
truststore truststore
h11 h11
anyio anyio
idna idna
filelock filelock
fsspec fsspec
tqdm tqdm
packaging packaging
typing_extensions typing_extensions
pyyaml yaml
typer typer
click click
rich rich
markdown-it-py markdown_it
mdurl mdurl
pygments pygments
shellingham shellingham
annotated-doc annotated_doc
pydantic pydantic
pydantic_core pydantic_core
annotated-types annotated_types
typing-inspection typing_inspection
pandas pandas
python-dateutil dateutil
tzdata tzdata
numpy numpy
pillow PIL
torchvision torchvision
"

: > "$DEST/manifest.txt.tmp"
while read -r dist module; do
  [ -z "$dist" ] && continue
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist" 2>/dev/null) || {
    echo "gpu-wheels: $dist is not installed in .venv; skipped" >&2; continue; }
  before=$(ls "$DEST")
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "$dist==$version" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  # the wheel of this distribution: pip names files after the normalised project name
  norm=$(echo "$dist" | tr 'A-Z-.' 'a-z__')
  wheel=$(cd "$DEST" && ls | grep -i "^${norm}-${version}-.*\.whl$" | head -1 || true)
  if [ -z "$wheel" ]; then
    wheel=$(comm -13 <(echo "$before") <(ls "$DEST") | grep '\.whl$' | head -1 || true)
  fi
  [ -n "$wheel" ] || { echo "gpu-wheels: no wheel found for $dist==$version" >&2; exit 1; }
  echo "$module $wheel" >> "$DEST/manifest.txt.tmp"
  echo "gpu-wheels: $dist==$version -> $wheel"
done <<< "$PACKAGES"
mv "$DEST/manifest.txt.tmp" "$DEST/manifest.txt"
du -sh "$DEST"
