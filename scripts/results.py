"""Quality tables of the README (issue 6): classification under missing data, density estimation.

    python scripts/results.py missing [--dataset digits | mnist-t10k] [--model NAME] [--out results/missing.json]
    python scripts/results.py density [--datasets digits nltcs] [--out results/density.json]
    python scripts/results.py default-run [--threads null 1] [--out results/default.json]

``missing`` follows the protocol of Sharir et al.'s tensorial mixture models (:mod:`convac.missing`):
test images with pixels missing i.i.d. at several rates, or inside 1 to 3 random squares,
classified by exact marginalization (``argmax_y log P(y | x_obs)``), beside scikit-learn
classifiers trained on complete images and fed mean-, zero- or KNN-imputed ones; it prints the
table and writes a figure (accuracy against the share missing, one line per method).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from convac import create_model, load_pretrained
from convac.cli.common import setup_data
from convac.configs import schema
from convac.data import create_datamodule
from convac.missing import PROTOCOLS, markdown_table, run_protocol
from convac.plotting import plot_missing
from convac.zoo.entries import compose_train_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# (dataset, model, experiment config, data root below ../shared/data or None)
DENSITY_RUNS = [
    ("digits", "CP", "zoo_cp_digits", None),
    ("digits", "HT", "zoo_ht_digits", None),
    ("mnist-t10k", "CP", "mnist_t10k_cp", "mnist-t10k"),
    ("mnist-t10k", "HT", "mnist_t10k_ht", "mnist-t10k"),
    ("nltcs", "HT", "zoo_ht_nltcs", "debd"),
    ("plants", "HT", "zoo_ht_plants", "debd"),
]
CIRKIT_UNITS = (4, 8, 16, 32, 64, 128)

# --dataset -> (datamodule kwargs, default model, protocol); data roots below ../shared/data
MISSING_DATA = {
    "digits": ({"name": "digits"}, "ht_digits_classifier", "digits"),
    "mnist-t10k": ({"name": "mnist", "split": "t10k", "root": str(SHARED_DATA / "mnist-t10k")}, "ht_mnist_classifier", "mnist"),
}


def run_missing(dataset: str, model_name: str | None, data_root: str | None, seed: int, knn_rows: int) -> dict:
    """:func:`convac.missing.run_protocol` for the zoo classifier of ``dataset`` (or ``model_name``)
    on its test split, the baselines fitted on its training split."""
    settings, default_model, protocol = MISSING_DATA[dataset]
    settings = {**settings, **({"root": data_root} if data_root else {})}
    datamodule = create_datamodule(**settings)
    model_name = model_name or default_model
    model = load_pretrained(model_name).eval()
    datamodule.check_fits(model, model_name)
    train, test = datamodule.split("train"), datamodule.split("test")
    start = time.perf_counter()
    result = run_protocol(model, train, test, PROTOCOLS[protocol], datamodule.num_values, seed, knn_rows,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    return {"dataset": dataset, "model": model_name, "train_size": len(train[1]), "test_size": len(test[1]),
            "knn_rows": knn_rows if 0 < knn_rows < len(train[1]) else len(train[1]), "seed": seed,
            "wall_s": time.perf_counter() - start, **result}


def independent_baseline(datamodule) -> dict:
    """Fully factorized categorical model, ``P(x) = prod_v f_v(x_v)`` with add-one smoothing,
    fitted on the training split: the test NLL every structured model must beat."""
    (train_x, _), (test_x, _) = datamodule.split("train"), datamodule.split("test")
    v = datamodule.num_values
    counts = torch.nn.functional.one_hot(train_x.flatten(1), v).sum(0).double() + 1.0  # (D, v)
    log_f = (counts / counts.sum(1, keepdim=True)).log()
    nll = -log_f.gather(1, test_x.flatten(1).t()).sum(0).mean()
    return {"params": int(log_f.numel()), "test_nll": float(nll)}


def run_ours(experiment: str, root: str | None, run_dir: Path) -> dict:
    """Train with ``convac-train experiment=...`` (one thread) and read the best checkpoint's
    test metrics from the run's ``metrics.csv``."""
    command = [sys.executable, "-m", "convac.cli.train", f"experiment={experiment}", f"hydra.run.dir={run_dir}",
               "threads=1", "~callbacks.entropy_probe"] + ([f"data.root={root}"] if root else [])
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with (run_dir / "metrics.csv").open(newline="") as f:
        test = [row for row in csv.DictReader(f) if row.get("test/nll")][-1]
    return {"test_nll": float(test["test/nll"]), "seconds": seconds, "command": " ".join(["convac-train"] + command[3:])}


def cirkit_units_for(params: int, shape, num_values: int) -> int:
    """The libcirkit width whose parameter count is closest to ``params``."""
    from bench import cirkit_circuit

    counts = {k: sum(p.numel() for p in cirkit_circuit(shape, num_values, k, torch.device("cpu")).parameters())
              for k in CIRKIT_UNITS}
    return min(counts, key=lambda k: abs(math.log(counts[k] / params)))


def run_cirkit(cfg, datamodule, units: int) -> dict:
    """libcirkit's quad-tree CP circuit trained like ours: same splits, batch size, optimizer,
    learning rate and epochs; test NLL of the epoch with the best validation NLL."""
    from bench import cirkit_circuit

    torch.manual_seed(cfg.seed)
    circuit = cirkit_circuit(datamodule.in_shape, datamodule.num_values, units, torch.device("cpu"))
    optimizer = getattr(torch.optim, cfg.module.optimizer)(circuit.parameters(), lr=cfg.module.lr)

    def log_likelihoods(split: str) -> torch.Tensor:
        x, _ = datamodule.split(split)
        with torch.no_grad():
            return torch.cat([circuit(b.flatten(1)).flatten() for b in x.split(1024)])

    def nll(split: str) -> float:
        return float(-log_likelihoods(split).mean())

    best, best_state, start = math.inf, None, time.perf_counter()
    for _ in range(cfg.trainer.max_epochs):
        for x, _ in datamodule.train_dataloader():
            loss = -circuit(x.flatten(1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val = nll("val")
        if val < best or best_state is None:
            best, best_state = val, copy.deepcopy(circuit.state_dict())
    circuit.load_state_dict(best_state)
    test = log_likelihoods("test")
    # libcirkit clamps log-values at about -708 (exp underflow in float64 terms): when every test
    # image gets the same clamped value, the number is not a likelihood and is flagged as such
    clamped = bool(test.std() < 1e-6)
    return {"params": sum(p.numel() for p in circuit.parameters()), "units": units, "test_nll": float(-test.mean()),
            "best_val_nll": best, "clamped": clamped, "seconds": time.perf_counter() - start}


def run_density(out_dir: Path, only: set[str] | None = None) -> dict:
    """Every row of :data:`DENSITY_RUNS` (skipping those whose data is absent), with libcirkit
    at a similar parameter count and the independent baseline once per dataset."""
    rows, done_baselines = [], set()
    for dataset, label, experiment, root_name in DENSITY_RUNS:
        if only and dataset not in only:
            continue
        root = str(SHARED_DATA / root_name) if root_name else None
        if root and not Path(root).exists():
            print(f"skipping {dataset}: {root} is absent", file=sys.stderr)
            continue
        cfg = compose_train_config([f"experiment={experiment}"] + ([f"data.root={root}"] if root else []))
        datamodule = setup_data(cfg)  # fills the shape read from the data into cfg.model
        model_kwargs = schema.to_kwargs(cfg.model)
        params = sum(p.numel() for p in create_model(model_kwargs.pop("name"), **model_kwargs).parameters())
        ours = run_ours(experiment, root, out_dir / "runs" / experiment)
        dims = math.prod(datamodule.in_shape)
        rows.append({"dataset": dataset, "model": f"convac {label}", "params": params, "dims": dims,
                     "epochs": cfg.trainer.max_epochs, **ours})
        print(rows[-1], file=sys.stderr)
        if dataset not in done_baselines:
            done_baselines.add(dataset)
            units = cirkit_units_for(params, datamodule.in_shape, datamodule.num_values)
            cirkit = run_cirkit(cfg, datamodule, units)
            rows.append({"dataset": dataset, "model": f"libcirkit quad-tree CP (K={units})", "dims": dims,
                         "epochs": cfg.trainer.max_epochs, **cirkit})
            rows.append({"dataset": dataset, "model": "independent pixels", "dims": dims, "epochs": 0,
                         **independent_baseline(datamodule)})
            print(rows[-2:], file=sys.stderr)
    for row in rows:
        row["test_bpd"] = row["test_nll"] / (row["dims"] * math.log(2))
    return {"rows": rows}


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


def markdown_density(result: dict) -> str:
    lines = ["| dataset | model | params | epochs | test NLL (nats) | bits/dim | train s |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        seconds = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        nll = f"{r['test_nll']:.2f}"
        bpd = f"{r['test_bpd']:.3f}"
        if r.get("clamped"):  # a constant clamped output, not a likelihood
            nll, bpd = f"fails: clamped, every image gets log P = {-r['test_nll']:.1f}", "-"
        lines.append(f"| {r['dataset']} | {r['model']} | {r['params']:,} | {r['epochs']} | {nll} | {bpd} | {seconds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="table", required=True)
    missing = sub.add_parser("missing", help="classification under missing data (the TMM protocol)")
    missing.add_argument("--dataset", choices=sorted(MISSING_DATA), default="digits")
    missing.add_argument("--model", help="zoo name, .safetensors or .ckpt (default: the zoo classifier of the dataset)")
    missing.add_argument("--data-root", help="MNIST: the folder of the t10k IDX files (default: ../shared/data/mnist-t10k)")
    missing.add_argument("--knn-rows", type=int, default=2000,
                         help="training images the KNN imputer searches (a seeded subset; 0: all)")
    missing.add_argument("--seed", type=int, default=0)
    missing.add_argument("--figure", type=Path, help="the figure (default: results/missing_<dataset>.png)")
    missing.add_argument("--out", type=Path)
    density = sub.add_parser("density", help="test NLL of CP/HT beside libcirkit and independent pixels")
    density.add_argument("--datasets", nargs="*", help="a subset of: digits mnist-t10k nltcs plants")
    density.add_argument("--runs", type=Path, default=Path("results"), help="folder for the training runs")
    density.add_argument("--out", type=Path)
    default = sub.add_parser("default-run", help="the default convac-train: time, metrics, probe cost")
    default.add_argument("--threads", nargs="*", default=["null", "1"], help="values of the threads option")
    default.add_argument("--runs", type=Path, default=Path("results"), help="folder for the training runs")
    default.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.table == "missing":
        result = run_missing(args.dataset, args.model, args.data_root, args.seed, args.knn_rows)
        print(markdown_table(result["rows"]))
        figure = args.figure or Path("results") / f"missing_{args.dataset}.png"
        figure.parent.mkdir(parents=True, exist_ok=True)
        title = (f"{result['model']} on {args.dataset}: {result['test_size']:,} test images "
                 f"(baselines trained on {result['train_size']:,}; KNN over {result['knn_rows']:,})")
        print(f"figure written to {plot_missing(result['rows'], title, figure)}", file=sys.stderr)
    elif args.table == "default-run":
        result = {"rows": [run_default(args.runs / "runs" / f"default_threads_{t}", t) for t in args.threads]}
        print(markdown_default(result["rows"]))
    else:
        result = run_density(args.runs, set(args.datasets) if args.datasets else None)
        print(markdown_density(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
