#!/usr/bin/env bash
# Every GPU benchmark in one go, sized to end within 8 minutes on one H100/H200, every
# output in one folder:
#
#   1. gpu_paper_preset.py            the paper preset, 5 folds x 2 epochs (eager)
#   2. gpu_paper_preset.py --parallel-folds 5   the same, its 5 folds at once on the GPU
#   3. gpu_paper_preset.py --compile  the same, one fold at a time, through torch.compile
#                                     (CUDA graphs)
#   4. pipeline_efficiency.py         the loop against its bare bound, resnet50 at 224 px
#   5. gpu_grid.py                    8 configurations x 5 folds, packed against one by one
#   6. the GPU tests                  pytest -m gpu: fused Adam, no synchronisation inside
#                                     an epoch, folds packed on the GPU
#   7. peak memory                    the device's memory in use (nvidia-smi, every 200 ms,
#                                     all processes) during each step; its peak per step
#
# Usage:
#   bash benchmarks/device_check.sh [--smoke] [--out DIR]
#   bash benchmarks/device_check.sh --fetch-wheels     # here, with PyPI: see below
#
# --smoke runs each step tiny on the CPU (tinycnn, a few patients, one thread; the compiled
# step through TorchDynamo's eager backend): it proves that every step runs, in about a
# minute on two cores. CI runs it.
#
# The output folder (default benchmarks/out/device_check, or .../device_check-smoke) holds
# four files: summary.md (every step's Markdown and its status), results.json (every
# step's JSON, status, seconds and peak device memory), device_check.log (everything the
# steps printed) and parts.tar.gz (each step's own files).
#
# A GPU machine without PyPI: ichbench needs duckdb and nibabel, which such a machine may
# lack. `--fetch-wheels`, run where pip reaches PyPI, downloads them (the versions
# installed here, built for CPython 3.12 on x86-64 Linux) into wheels/; carry that folder
# with the working tree. When wheels/ is present the script installs them (no index, no
# network) into a private folder first, and ichbench itself from this checkout unless it
# is installed already. The exit status is 0 when every step succeeded, 1 otherwise: a
# step that fails or runs out of time is recorded, and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
SMOKE=0
OUT_DIR=""

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

fetch_wheels() {
    mkdir -p wheels
    local specs=()
    for name in duckdb nibabel; do
        version=$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))") || {
            echo "device_check: $name is not installed here; install ichbench first" >&2
            exit 2
        }
        specs+=("$name==$version")
    done
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d wheels "${specs[@]}"
    echo "device_check: wheels/ holds $(ls wheels | tr '\n' ' ')"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --out)
            [ $# -ge 2 ] || { echo "Error: --out needs a folder" >&2; exit 2; }
            OUT_DIR=$2
            shift
            ;;
        --fetch-wheels) fetch_wheels; exit 0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "Error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$OUT_DIR" ]; then
    OUT_DIR=benchmarks/out/device_check$([ "$SMOKE" = 1 ] && echo -smoke)
fi
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PARTS=$(mktemp -d)
LOG=$OUT_DIR/device_check.log
STATUS=$PARTS/status.tsv
: >"$LOG"
: >"$STATUS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 ICHBENCH_LOAD_PLUGINS=""
say() { echo "device_check: $*" | tee -a "$LOG" >&2; }

# ---------------------------------------------------------------- dependencies
if compgen -G "wheels/*.whl" >/dev/null; then
    SITE=${TMPDIR:-/tmp}/ichbench-device-site
    say "installing $(ls wheels/*.whl | wc -l) carried wheel(s) into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" wheels/*.whl >>"$LOG" 2>&1 || { say "installing wheels/ failed"; exit 1; }
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -c "import importlib.metadata as m; m.distribution('ichbench')" 2>/dev/null; then
    SITE=${SITE:-${TMPDIR:-/tmp}/ichbench-device-site}
    say "installing ichbench from $ROOT into $SITE (no index, no dependencies)"
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
        --target "$SITE" "$ROOT" >>"$LOG" 2>&1 || { say "installing ichbench failed"; exit 1; }
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
missing=$("$PY" - <<'EOF'
import importlib.util
need = ("torch", "timm", "typer", "duckdb", "nibabel", "ichbench", "ichbench_plugins", "pytest")
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
    say "missing Python packages: $missing (carry them: bash benchmarks/device_check.sh --fetch-wheels where PyPI answers)"
    exit 1
fi

# ---------------------------------------------------------------- the steps
if [ "$SMOKE" = 1 ]; then
    export OMP_NUM_THREADS=1 # a shared two-core machine: one thread, no spinning waits
    GPU=0
else
    GPU=1
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        say "no CUDA device here: run on a GPU machine, or use --smoke"
        exit 1
    }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1
fi
CACHE=$PARTS/cache # the paper-sized volumes, generated once for the first three steps

# step NAME LIMIT_S COMMAND...: run it with a time limit, its output into the log, the
# device's memory sampled meanwhile; its own files are benchmarks/out/NAME.{json,md}
step() {
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS sampler="" rc
    say "$name: $* (at most ${limit} s)"
    if [ "$GPU" = 1 ] && command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 \
            >"$PARTS/$name.memory" 2>/dev/null &
        sampler=$!
    fi
    timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null
    local seconds=$((SECONDS - started)) state=ok
    if [ $rc = 124 ] || [ $rc = 137 ]; then state=timeout; elif [ $rc != 0 ]; then state=failed; fi
    for ext in json md; do
        if [ -f "benchmarks/out/$name.$ext" ]; then
            mv "benchmarks/out/$name.$ext" "$PARTS/"
        fi
    done
    printf '%s\t%s\t%s\t%s\n' "$name" "$state" "$rc" "$seconds" >>"$STATUS"
    say "$name: $state after ${seconds} s"
}

BENCH=(env PYTHONPATH="${PYTHONPATH:-}" "$PY")
if [ "$SMOKE" = 1 ]; then
    step paper_preset 60 "${BENCH[@]}" benchmarks/gpu_paper_preset.py --smoke \
        --backbone tinycnn --cache "$CACHE" --name paper_preset
    step paper_preset_compiled 60 "${BENCH[@]}" benchmarks/gpu_paper_preset.py --smoke \
        --backbone tinycnn --compile --cache "$CACHE" --name paper_preset_compiled
    step pipeline_efficiency 60 "${BENCH[@]}" benchmarks/pipeline_efficiency.py \
        --patients 6 --image-size 32 --batch-size 16 --rounds 1 --bare-steps 3 --threads 1 \
        --name pipeline_efficiency
    step gpu_grid 90 "${BENCH[@]}" benchmarks/gpu_grid.py --smoke --name gpu_grid
else
    step paper_preset 80 "${BENCH[@]}" benchmarks/gpu_paper_preset.py \
        --cache "$CACHE" --name paper_preset
    step paper_preset_packed 50 "${BENCH[@]}" benchmarks/gpu_paper_preset.py \
        --parallel-folds 5 --cache "$CACHE" --name paper_preset_packed
    step paper_preset_compiled 120 "${BENCH[@]}" benchmarks/gpu_paper_preset.py --compile \
        --cache "$CACHE" --name paper_preset_compiled
    step pipeline_efficiency 50 "${BENCH[@]}" benchmarks/pipeline_efficiency.py \
        --device cuda --backbone resnet50 --image-size 224 --patients 80 --native 256 \
        --rounds 2 --cache "$CACHE" --name pipeline_efficiency
    step gpu_grid 140 "${BENCH[@]}" benchmarks/gpu_grid.py --name gpu_grid
    step gpu_tests 40 "${BENCH[@]}" -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_training.py tests/test_gpu_packing.py
fi

# ---------------------------------------------------------------- one report
"$PY" - "$PARTS" "$OUT_DIR" "$SMOKE" <<'EOF'
import json
import sys
from pathlib import Path

parts, out, smoke = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
results, lines = {}, []
lines.append("# Device check" + (" (smoke, on the CPU: no figure is a GPU figure)" if smoke else ""))
for row in (parts / "status.tsv").read_text().splitlines():
    name, state, rc, seconds = row.split("\t")
    entry = {"status": state, "exit_code": int(rc), "seconds": int(seconds)}
    memory = parts / f"{name}.memory"
    if memory.is_file():
        used = [int(v) for v in memory.read_text().split() if v.strip().isdigit()]
        entry["peak_device_memory_mib"] = max(used) if used else None
    result = parts / f"{name}.json"
    if result.is_file():
        entry["result"] = json.loads(result.read_text())
    results[name] = entry
    peak = entry.get("peak_device_memory_mib")
    lines += ["", f"## {name}: {state} ({seconds} s)" + (f", peak device memory {peak} MiB" if peak else "")]
    md = parts / f"{name}.md"
    if md.is_file():
        lines += ["", md.read_text().strip().replace("\n## ", "\n### ").removeprefix("## ")]
(out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
(out / "summary.md").write_text("\n".join(lines) + "\n")
EOF
tar -czf "$OUT_DIR/parts.tar.gz" -C "$PARTS" --exclude cache . 2>>"$LOG"
rm -rf "$PARTS"
if grep -q '"status": "\(failed\|timeout\)"' "$OUT_DIR/results.json"; then
    say "some steps did not succeed: see $OUT_DIR/summary.md and $LOG"
    exit 1
fi
say "every step succeeded; outputs in $OUT_DIR"
