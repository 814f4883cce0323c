#!/usr/bin/env bash
# What a lent GPU machine needs beside the working tree, made here: that machine reaches no
# package registry and gets only the repository. Run from the repository root:
#
#     bash scripts/gpu_carry.sh
#
# It writes, into folders git ignores:
#   .whl/               wheels of the packages the GPU image lacks: Hydra, OmegaConf and its
#                       parser runtime (built here from its source archive, the only form it is
#                       published in), libcirkit and graphviz for the bench. The image's own
#                       torch, Lightning, NumPy, SciPy, scikit-learn, matplotlib, Pillow,
#                       safetensors, PyYAML, einops, opt-einsum, setuptools, pytest and
#                       hypothesis are used as they are (the lent machines' image holds them);
#   results/mnist-t10k  the MNIST t10k IDX files, from $MNIST_ROOT or ../shared/data/mnist-t10k.
#
# On the GPU machine, with both paths carried, the checks then run as
#
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#         && PYTHONPATH=/tmp/site OUT=results/gpu bash scripts/gpu_check.sh
#     tar czf gpu_check.tgz --exclude='*.ckpt' results/gpu    # the logs, JSON files and run metrics in one file
#
# (docs/results/precision.md, "GPU"). Versions are those installed here, for Python 3.12.
set -euo pipefail
PY=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
download() {  # download NAME...: pure-Python wheels of the versions installed here
    local specs=()
    for name in "$@"; do specs+=("$name==$(version "$name")"); done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform any -d .whl "${specs[@]}"
}
download hydra-core omegaconf graphviz libcirkit
"$PY" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"

MNIST=${MNIST_ROOT:-../shared/data/mnist-t10k}
if [ "$(cd "$MNIST" && pwd)" != "$PWD/results/mnist-t10k" ]; then
    rm -rf results/mnist-t10k && mkdir -p results/mnist-t10k
    cp "$MNIST"/t10k-* results/mnist-t10k/
fi
ls -l .whl results/mnist-t10k
du -sh .whl results/mnist-t10k
