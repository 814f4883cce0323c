#!/usr/bin/env bash
# Install convac as users do, from its wheel into a fresh virtual environment (not editable, no
# source tree on the path), and run what a new user runs first: one epoch of convac-train on the
# bundled digits and a pretrained zoo model. Checks that the wheel holds every config YAML and
# every zoo file of the source tree.
#   bash scripts/check_wheel.sh            (from the repository root; CI runs it)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# build from a copy of the files git tracks or would track (no stale build/ folder in the wheel)
mkdir "$work/src"
git -C "$root" ls-files -z --cached --others --exclude-standard | (cd "$root" && tar --null -T - -cf -) | tar -C "$work/src" -xf -
python -m pip wheel --no-deps --quiet -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/convac-*.whl)"
python - "$wheel" "$work/src" <<'PY'
import sys, zipfile
from pathlib import Path
wheel, root = sys.argv[1], Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
# configs/ is the package convac.configs in the wheel
expected = {f"convac/{p.relative_to(root)}" for p in root.glob("configs/**/*.yaml")}
expected |= {str(p.relative_to(root)) for pattern in ("convac/zoo/weights/*", "convac/zoo/cards/*") for p in root.glob(pattern)}
missing = sorted(expected - names)
if missing:
    sys.exit(f"the wheel lacks {len(missing)} files of the source tree: {missing[:10]}")
print(f"wheel {Path(wheel).name}: {len(names)} files, every config YAML and zoo file of the source tree")
PY

python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet torch==2.13.0
"$work/venv/bin/python" -m pip install --quiet "$wheel"
cd "$work"  # no source tree here: everything comes from the installed wheel
"$work/venv/bin/python" -c "import convac, sys; assert 'site-packages' in convac.__file__, convac.__file__"
"$work/venv/bin/convac-train" hydra.run.dir="$work/run" trainer.max_epochs=1 trainer.enable_progress_bar=false threads=1 \
    > "$work/train.log" 2>&1 || { tail -30 "$work/train.log"; exit 1; }
grep -q "last.ckpt" "$work/train.log"
"$work/venv/bin/python" - <<'PY'
import torch, convac
model = convac.create_model("ht_digits", pretrained=True)
x = model.sample(4, generator=torch.Generator().manual_seed(0))
nll = -model.log_prob(x).mean().item()
assert torch.isfinite(torch.tensor(nll)), nll
print(f"installed wheel: convac-train ran one epoch; create_model('ht_digits', pretrained=True) gives finite log-likelihoods ({nll:.2f} nats on its samples)")
PY
