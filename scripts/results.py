"""Quality tables of the README (issue 6): classification under missing data, density estimation.

    python scripts/results.py missing [--model ht_digits_classifier] [--out results/missing.json]
    python scripts/results.py density [--datasets digits nltcs] [--out results/density.json]   (scripts/density.py)
    python scripts/results.py default-run [--threads null 1] [--out results/default.json]

``missing`` follows the protocol of Sharir et al.'s tensorial mixture models: test images of the
digits with pixels missing i.i.d. at several rates, or inside a random square, classified by
exact marginalization (``argmax_y log P(y | x_obs)``), beside scikit-learn classifiers trained
on complete images and fed mean- or zero-imputed ones.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from convac import load_pretrained
from convac.data import DigitsDataModule
from density import DATASETS, SHARED_DATA, markdown_density, run_density

RATES = (0.0, 0.25, 0.5, 0.75, 0.9)
SQUARES = (3, 4, 5, 6)


def missing_masks(x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Bool masks like ``x`` (N, 1, H, W): ``iid p`` for each rate, ``square s`` for each side."""
    n, _, h, w = x.shape
    masks = {f"iid {rate:g}": torch.rand(x.shape, generator=generator) < rate for rate in RATES}
    for side in SQUARES:
        top = torch.randint(0, h - side + 1, (n,), generator=generator)
        left = torch.randint(0, w - side + 1, (n,), generator=generator)
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + side).view(n, 1, 1))
                  & (cols >= left.view(n, 1, 1)) & (cols < (left + side).view(n, 1, 1)))
        masks[f"square {side}x{side}"] = inside.unsqueeze(1)
    return masks


def baselines(train_x: np.ndarray, train_y: np.ndarray) -> dict:
    """scikit-learn classifiers a user would pick, trained on complete images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    return {
        "svm_rbf": SVC(C=10, gamma="scale").fit(train_x, train_y),
        "logreg": LogisticRegression(max_iter=5000).fit(train_x, train_y),
    }


@torch.no_grad()
def run_missing(model_name: str, seed: int = 0) -> dict:
    """Accuracy of the ConvAC and the imputation baselines for every missingness pattern."""
    model = load_pretrained(model_name).double().eval()
    data = DigitsDataModule()
    (train_x, train_y), (test_x, test_y) = data.split("train"), data.split("test")
    flat_train = train_x.flatten(1).double().numpy()
    mean_image = flat_train.mean(0)
    classifiers = baselines(flat_train, train_y.numpy())
    rows = []
    for pattern, mask in missing_masks(test_x, torch.Generator().manual_seed(seed)).items():
        pred = model.log_posterior(test_x, mask).argmax(1)
        row = {"pattern": pattern, "missing_share": float(mask.double().mean()),
               "convac": float((pred == test_y).double().mean())}
        flat_mask = mask.flatten(1).numpy()
        flat_test = test_x.flatten(1).double().numpy()
        for imputation, fill in (("mean", np.broadcast_to(mean_image, flat_test.shape)), ("zero", np.zeros_like(flat_test))):
            imputed = np.where(flat_mask, fill, flat_test)
            for name, clf in classifiers.items():
                row[f"{name}_{imputation}"] = float((clf.predict(imputed) == test_y.numpy()).mean())
        rows.append(row)
    return {"model": model_name, "test_size": len(test_y), "rows": rows}


def markdown_missing(result: dict) -> str:
    keys = [k for k in result["rows"][0] if k not in ("pattern", "missing_share")]
    lines = ["| missing | share | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for row in result["rows"]:
        lines.append(f"| {row['pattern']} | {row['missing_share']:.2f} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def run_default(run_dir: Path, threads: str) -> dict:
    """The default ``convac-train`` (HT on digits, probe on): wall time, final validation and
    test metrics, and the probe's cost (``entropy/probe_share``) and precision per epoch."""
    command = [sys.executable, "-m", "convac.cli.train", f"hydra.run.dir={run_dir}", f"threads={threads}",
               "trainer.enable_progress_bar=false"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r.get("val/nll")][-1]
    test = [r for r in rows if r.get("test/nll")][-1]
    with (run_dir / "entropy.csv").open(newline="") as f:
        probes = list(csv.DictReader(f))
    shares = sorted(float(r["entropy/probe_share"]) for r in probes)
    se_rel = [float(r["entropy/H_X_se"]) / float(r["entropy/H_X"]) for r in probes]
    return {"threads": threads, "wall_s": seconds, "epochs": len(probes), "val_nll": float(val["val/nll"]),
            "val_bpd": float(val["val/bpd"]), "test_nll": float(test["test/nll"]), "test_bpd": float(test["test/bpd"]),
            "probe_share_median": shares[len(shares) // 2], "probe_share_mean": sum(shares) / len(shares),
            "probe_seconds_median": sorted(float(r["entropy/probe_seconds"]) for r in probes)[len(probes) // 2],
            "h_x_se_rel_max": max(se_rel)}


def markdown_default(rows: list[dict]) -> str:
    lines = ["| threads | wall (s) | epochs | val NLL | val bits/dim | test NLL | test bits/dim | probe share of an epoch (median / mean) | probe s | max SE(H(X))/H(X) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['wall_s']:.1f} | {r['epochs']} | {r['val_nll']:.2f} | {r['val_bpd']:.3f} | "
                     f"{r['test_nll']:.2f} | {r['test_bpd']:.3f} | {100 * r['probe_share_median']:.1f}% / "
                     f"{100 * r['probe_share_mean']:.1f}% | {r['probe_seconds_median']:.4f} | {100 * r['h_x_se_rel_max']:.2f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="table", required=True)
    missing = sub.add_parser("missing", help="digits classification under missing data")
    missing.add_argument("--model", default="ht_digits_classifier", help="zoo name, .safetensors or .ckpt")
    missing.add_argument("--seed", type=int, default=0)
    missing.add_argument("--out", type=Path)
    density = sub.add_parser("density", help="test NLL of convac's recipes beside libcirkit's and independent variables")
    density.add_argument("--datasets", nargs="*", help="a subset of: " + " ".join(d.name for d in DATASETS))
    density.add_argument("--data-root", type=Path, default=SHARED_DATA, help="folder holding mnist-t10k/ and debd/")
    density.add_argument("--runs", type=Path, default=Path("results"), help="folder for the training runs")
    density.add_argument("--out", type=Path)
    default = sub.add_parser("default-run", help="the default convac-train: time, metrics, probe cost")
    default.add_argument("--threads", nargs="*", default=["null", "1"], help="values of the threads option")
    default.add_argument("--runs", type=Path, default=Path("results"), help="folder for the training runs")
    default.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.table == "missing":
        result = run_missing(args.model, args.seed)
        print(markdown_missing(result))
    elif args.table == "default-run":
        result = {"rows": [run_default(args.runs / "runs" / f"default_threads_{t}", t) for t in args.threads]}
        print(markdown_default(result["rows"]))
    else:
        result = run_density(args.runs, args.data_root, set(args.datasets) if args.datasets else None)
        print(markdown_density(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
