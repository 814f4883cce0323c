#!/usr/bin/env bash
# The GPU checks (the gpu tests, the speed targets, the precisions, an MNIST run) in one go (about
# 6-8 minutes on one GPU; each stage has its own time limit, 570 s in all, so one stuck stage does
# not cost the others). Run from the repository root:
#
#     OUT=/some/folder bash scripts/gpu_check.sh
#
# On a lent machine that has no package registry, first make its wheels and data here with
# scripts/gpu_carry.sh. DEVICE=cpu rehearses every stage on the CPU (the large stages may reach
# their limits there): it checks the script, its imports and its files without a GPU.
#
# Stages, most needed first (their outputs go to $OUT, default results/gpu):
#   1. environment: nvidia-smi, torch / CUDA versions, whether libcirkit is importable;
#   2. the `gpu` tests (pytest -m gpu): CUDA equals CPU, and a training step synchronizes the host
#      once (the exact-position plan) and runs under torch.cuda.set_sync_debug_mode("error") once
#      that plan is made (tests/test_gpu.py);
#   3. scripts/bench.py --device cuda with a large model (K = 128, batch 512) beside libcirkit on
#      the same GPU: the sum-node kernels chosen per size class, sum layer, training rows (28x28,
#      digits, 64x64), probe -> bench_gpu.json;
#   4. the precisions on the GPU: scripts/results.py precision (the digits default and 5 epochs of
#      the MNIST t10k recipe under 32-true, bf16-mixed and 16-mixed; 16-mixed with EM is refused
#      by design, a row with its exit code) -> precision_gpu.json;
#   5. a 5-epoch MNIST t10k run with the entropy probe (convac-train experiment=mnist_t10k_ht
#      trainer=gpu) -> mnist/;
#   6. the scaling rows on the GPU (8x8 .. 128x128, peak memory) -> bench_gpu_scaling.json;
#   7. torch.compile against eager on the GPU -> bench_gpu_compile.json.
#
# MNIST is read from $MNIST_ROOT, else ../shared/data/mnist-t10k, else results/mnist-t10k (the
# device machine only gets the working tree: copy the t10k IDX files to results/mnist-t10k, an
# ignored folder, and name it in the run's carry list). The summary of every stage is printed at
# the end; the numbers for the docs' GPU table are in the JSON files and mnist/metrics.csv.
set -u
OUT=${OUT:-results/gpu}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
TRAINER=$([ "$DEVICE" = cuda ] && echo gpu || echo "$DEVICE")
mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/*.json  # an earlier run's outputs: a stage that fails now leaves none
export PYTHONUNBUFFERED=1
STATUS=()

# The tree's configs/ is the package convac.configs only in an installed convac: unless this
# tree is importable so (a bare GPU machine, or another checkout installed), install it,
# editable, as CI does, fetching nothing
if ! "$PY" -c "import sys, convac, convac.configs; sys.exit(not convac.__file__.startswith('$PWD/'))" 2> /dev/null; then
    if "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1; then
        STATUS+=("install: this tree, editable")
    else
        tail -n 5 "$OUT/install.log"
        STATUS+=("install: failed, see install.log (the stages that train will fail)")
    fi
fi

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    STATUS+=("$name: exit $rc after $((SECONDS - start)) s")
}

stage environment 20 env PY="$PY" bash -c '
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")"
    "$PY" -c "import cirkit.pipeline, importlib.metadata as m; print(\"libcirkit\", m.version(\"libcirkit\"))" || echo "libcirkit: not importable (its bench columns are skipped)"
    "$PY" -c "import lightning, hydra, convac.configs; print(\"lightning\", lightning.__version__, \"hydra\", hydra.__version__)" || echo "lightning/hydra: not importable (the precision and MNIST stages will fail)"'

stage gpu_tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/

stage bench 140 "$PY" scripts/bench.py --quick --device "$DEVICE" --train-channels 128 --train-batch 512 \
    --only kernels sum_layer train probe --out "$OUT/bench_gpu.json"

MNIST=${MNIST_ROOT:-}
for candidate in ../shared/data/mnist-t10k results/mnist-t10k; do
    [ -z "$MNIST" ] && [ -d "$candidate" ] && MNIST=$candidate
done
# results.py reads <data root>/mnist-t10k: link the folder found there under that name
mkdir -p "$OUT/data" && rm -f "$OUT/data/mnist-t10k"
[ -n "$MNIST" ] && ln -s "$(cd "$MNIST" && pwd)" "$OUT/data/mnist-t10k"
stage precision 150 "$PY" scripts/results.py precision --precisions 32-true bf16-mixed 16-mixed \
    --overrides trainer=$TRAINER --data-root "$OUT/data" --runs "$OUT" --out "$OUT/precision_gpu.json"

if [ -n "$MNIST" ]; then
    stage mnist 50 "$PY" -m convac.cli.train experiment=mnist_t10k_ht "data.root=$MNIST" trainer=$TRAINER \
        trainer.max_epochs=5 trainer.enable_progress_bar=false "hydra.run.dir=$OUT/mnist"
else
    STATUS+=("mnist: skipped (no MNIST t10k files; set MNIST_ROOT)")
fi

stage scaling 40 "$PY" scripts/bench.py --quick --device "$DEVICE" --only scaling --out "$OUT/bench_gpu_scaling.json"

stage compile 80 "$PY" scripts/bench.py --quick --device "$DEVICE" --only compile --out "$OUT/bench_gpu_compile.json"

echo "=== summary"
printf '%s\n' "${STATUS[@]}"
grep -h -A8 "^summary" "$OUT"/bench.log "$OUT"/scaling.log "$OUT"/compile.log 2>/dev/null
grep -h "^|" "$OUT"/precision.log 2>/dev/null || grep -h "^done: |" "$OUT"/precision.log 2>/dev/null  # the table, or the rows of a stage cut short
[ -f "$OUT/mnist/entropy.csv" ] && "$PY" - "$OUT/mnist" <<'SUMMARY'
import csv, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/entropy.csv")))
metrics = [r for r in csv.DictReader(open(f"{sys.argv[1]}/metrics.csv")) if r.get("test/nll")]
shares = sorted(float(r["entropy/probe_share"]) for r in rows)
print(f"mnist: {len(rows)} probed epochs, median probe share {100 * shares[len(shares) // 2]:.1f}%,",
      f"test NLL {float(metrics[-1]['test/nll']):.2f}" if metrics else "no test row")
SUMMARY
