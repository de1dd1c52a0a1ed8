#!/usr/bin/env bash
# The GPU path, measured in one go (issue 13). On a fresh GPU machine with only this
# repository:
#
#   bench/device.sh OUT            install, export fp32 + fp16, serve --device gpu,
#                                  perf_analyzer over concurrency 1..256, client end to end;
#                                  writes OUT/device.json and OUT/device.md (names the card)
#   bench/device.sh OUT --dry-run  the same pipeline on CPU with small counts: no installs,
#                                  no downloads, the tiny encoder (tests/e2e/test_bench_device.py)
#
# Installs into $DEVICE_VENV (default .venv-device): CPU torch pinned as the Makefile pins
# it (export only needs the CPU), this package with [export,serve], onnxruntime-gpu in place
# of onnxruntime, nvidia-nvimgcodec-cu12, and perf_analyzer (`tritonvision bench --setup`).
# TensorRT is not installed: its engine builds alone would exceed the 8-minute budget
# (`tritonvision serve` uses it, engines cached in the work dir, when `tensorrt` imports).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: bench/device.sh OUT [--dry-run]" >&2
    exit 2
}

OUT=""
DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help) usage ;;
        -*) echo "bench/device.sh: unknown option $arg" >&2; usage ;;
        *) [ -z "$OUT" ] || usage; OUT="$arg" ;;
    esac
done
[ -n "$OUT" ] || usage
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

if [ "$DRY_RUN" = 1 ]; then
    PY="${PYTHON:-.venv/bin/python}"
    exec "$PY" -m tritonvision bench --device "$OUT" --dry-run
fi

START=$(date +%s)
VENV="${DEVICE_VENV:-.venv-device}"
PY="$VENV/bin/python"
TORCH_PIN="$(sed -n 's/^TORCH_PIN ?= *//p' Makefile)"
[ -n "$TORCH_PIN" ] || { echo "bench/device.sh: no TORCH_PIN in the Makefile" >&2; exit 1; }
command -v nvidia-smi >/dev/null || echo "bench/device.sh: warning: no nvidia-smi on PATH" >&2

test -x "$PY" || "${PYTHON:-python3}" -m venv "$VENV"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install --upgrade pip
pip_install "$TORCH_PIN" --index-url https://download.pytorch.org/whl/cpu
pip_install -e '.[export,serve]'
# onnxruntime-gpu and onnxruntime install the same module: only one may be present.
"$PY" -m pip uninstall --quiet -y onnxruntime
pip_install 'onnxruntime-gpu[cuda,cudnn]' 'nvidia-nvimgcodec-cu12[all]'
"$VENV/bin/tritonvision" bench --setup
INSTALLED=$(date +%s)

STATUS=0
"$VENV/bin/tritonvision" bench --device "$OUT" || STATUS=$?
END=$(date +%s)
if [ -f "$OUT/device.json" ]; then
    "$PY" - "$OUT/device.json" "$((INSTALLED - START))" "$((END - START))" <<'PYEOF'
import json, sys
path, install_s, total_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
with open(path) as fh:
    report = json.load(fh)
report.update(install_s=install_s, total_s=total_s, command="bench/device.sh OUT")
with open(path, "w") as fh:
    json.dump(report, fh, indent=2, sort_keys=True)
    fh.write("\n")
PYEOF
fi
echo "bench/device.sh: install $((INSTALLED - START)) s, total $((END - START)) s (budget 480 s)"
exit "$STATUS"
