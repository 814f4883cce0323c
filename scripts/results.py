"""The results tables of the docs: classification under missing data, density estimation, the
default run, the DEBD recipe's time on an unseen set, and the precisions.

    python scripts/results.py missing [--dataset digits | mnist-t10k] [--model NAME] [--out results/missing.json]
    python scripts/results.py density [--datasets digits nltcs] [--out results/density.json]   (scripts/density.py)
    python scripts/results.py default-run [--threads null 1] [--out results/default.json]
    python scripts/results.py recipe-time [--rows 15000] [--variables 100] [--out results/recipe_time.json]
    python scripts/results.py precision [--precisions 32-true bf16-mixed] [--overrides trainer=gpu] [--out results/precision.json]

``missing`` follows the protocol of Sharir et al.'s tensorial mixture models (``missing_protocol.py``):
test images with pixels missing i.i.d. at several rates, or inside 1 to 3 random squares,
classified by exact marginalization (``argmax_y log P(y | x_obs)``), beside scikit-learn
classifiers trained on complete images and fed mean-, zero- or KNN-imputed ones; it prints the
table and writes a figure (accuracy against the share missing, one line per method).
``recipe-time`` times the DEBD recipe on a set it has never seen, of the size the recipe is
budgeted for (at most 10 minutes on one thread for 15,000 rows of 100 variables).
``precision`` trains the digits default and the MNIST t10k recipe under each Lightning precision
(one thread, probe and pictures off, the same seed) and reports the test NLL and the seconds
per epoch (the run's wall time over its epochs, start-up and test included).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from convac import load_pretrained
from convac.data import create_datamodule
from density import DATASETS, SHARED_DATA, last_logged, markdown_density, run_density, run_training, trained_epochs
from missing_protocol import PROTOCOLS, markdown_table, plot_missing, run_protocol

# --dataset -> (datamodule kwargs, default model, protocol); data roots below ../shared/data
MISSING_DATA = {
    "digits": ({"name": "digits"}, "ht_digits_classifier", "digits"),
    "mnist-t10k": ({"name": "mnist", "split": "t10k", "root": str(SHARED_DATA / "mnist-t10k")}, "ht_mnist_classifier", "mnist"),
}


def run_missing(dataset: str, model_name: str | None, data_root: str | None, seed: int, knn_rows: int) -> dict:
    """:func:`missing_protocol.run_protocol` for the zoo classifier of ``dataset`` (or ``model_name``)
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


def run_default(run_dir: Path, threads: str) -> dict:
    """The default ``convac-train`` (HT on digits, probe on): wall time, final validation and
    test metrics, and the probe's cost (``entropy/probe_share``) and precision per epoch."""
    seconds, rows = run_training([f"threads={threads}"], run_dir)
    with (run_dir / "entropy.csv").open(newline="") as f:
        probes = list(csv.DictReader(f))
    shares = sorted(float(r["entropy/probe_share"]) for r in probes)
    se_rel = [float(r["entropy/H_X_se"]) / float(r["entropy/H_X"]) for r in probes]
    return {"threads": threads, "wall_s": seconds, "epochs": len(probes), "val_nll": last_logged(rows, "val/nll"),
            "val_bpd": last_logged(rows, "val/bpd"), "test_nll": last_logged(rows, "test/nll"),
            "test_bpd": last_logged(rows, "test/bpd"),
            "probe_share_median": shares[len(shares) // 2], "probe_share_mean": sum(shares) / len(shares),
            "probe_seconds_median": sorted(float(r["entropy/probe_seconds"]) for r in probes)[len(probes) // 2],
            "h_x_se_rel_max": max(se_rel)}


def write_sampled_debd(folder: Path, name: str, rows: int, variables: int, seed: int) -> None:
    """A binary DEBD-format set ``folder/name.{train,valid,test}.data`` of ``rows`` training rows
    (and a tenth, a fifth of that for validation and test) over ``variables`` columns: exact
    samples of the zoo's ``ht_pumsb_star`` (163 variables), its first ``variables`` columns, so
    that the columns depend on each other as in real tables."""
    model = load_pretrained("ht_pumsb_star").eval()
    if not 0 < variables <= model.in_shape[-1]:
        raise ValueError(f"variables must be in 1..{model.in_shape[-1]} (ht_pumsb_star's), got {variables}")
    if rows < 10:
        raise ValueError(f"rows must be at least 10 (a tenth of them are the validation split), got {rows}")
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", rows), ("valid", rows // 10), ("test", rows // 5)):
        with torch.no_grad():
            x = model.sample(n, generator=generator).reshape(n, -1)[:, :variables].long()
        (folder / f"{name}.{split}.data").write_text("\n".join(",".join(map(str, r)) for r in x.tolist()) + "\n")


def run_recipe_time(run_dir: Path, rows: int, variables: int, seed: int) -> dict:
    """The DEBD recipe as a user runs it on a new set (``convac-train experiment=debd_ht
    data.root=DIR data.dataset=NAME threads=1``, probe on) on a sampled set of ``rows`` x
    ``variables`` (:func:`write_sampled_debd`): wall time, epochs, test NLL."""
    name = f"sampled{variables}"
    write_sampled_debd(run_dir / "data", name, rows, variables, seed)
    command = ["experiment=debd_ht", f"data.root={run_dir / 'data'}", f"data.dataset={name}", "threads=1"]
    seconds, metrics = run_training(command, run_dir / "run")
    return {"rows": rows, "variables": variables, "wall_s": seconds, "epochs": trained_epochs(metrics),
            "test_nll": last_logged(metrics, "test/nll"), "command": " ".join(["convac-train", *command])}


# --precision runs: name -> (convac-train overrides, data folder below the data root or None)
PRECISION_RUNS = {
    "digits default": ((), None),
    "MNIST t10k (experiment=mnist_t10k_ht, 5 epochs)": (("experiment=mnist_t10k_ht", "trainer.max_epochs=5"), "mnist-t10k"),
}


def precision_args(name: str, precision: str, overrides: list[str], data_root: Path) -> list[str]:
    """The ``convac-train`` overrides of the run ``name`` of :data:`PRECISION_RUNS` under the
    Lightning precision ``precision``: one thread, probe and pictures off, ``overrides`` added."""
    run_overrides, folder = PRECISION_RUNS[name]
    args = [*run_overrides, f"trainer.precision={precision}", "threads=1", "~callbacks.entropy_probe",
            "~callbacks.pictures", *overrides]
    return args + ([f"data.root={data_root / folder}"] if folder else [])


def run_precision(run_dir: Path, data_root: Path, precisions: list[str], overrides: list[str]) -> list[dict]:
    """Every run of :data:`PRECISION_RUNS` under every precision (:func:`precision_args`), with
    ``overrides`` added (e.g. ``trainer=gpu``): test NLL, epochs, seconds per epoch. A run that
    ``convac-train`` refuses or that exits with an error is a row with its exit code (its message
    is on stderr), and the next run goes on. Each row is printed to stderr (after ``done:``) as
    it finishes, so a run cut short keeps the rows before it."""
    rows = []
    for name, (_, folder) in PRECISION_RUNS.items():
        if folder is not None and not (data_root / folder).is_dir():
            print(f"skipping {name}: no {data_root / folder}", file=sys.stderr)
            continue
        for precision in precisions:
            args = precision_args(name, precision, overrides, data_root)
            slug = "".join(c if c.isalnum() else "_" for c in f"{name}_{precision}")
            row = {"run": name, "precision": precision, "command": " ".join(["convac-train", *args])}
            try:
                seconds, metrics = run_training(args, run_dir / slug)
            except subprocess.CalledProcessError as error:
                row["exit_code"] = error.returncode
            else:
                epochs = trained_epochs(metrics)
                row.update(test_nll=last_logged(metrics, "test/nll"), epochs=epochs, seconds_per_epoch=seconds / epochs)
            rows.append(row)
            print("done:", markdown_precision(rows).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


def markdown_precision(rows: list[dict]) -> str:
    """The precision table: each run against its first precision that trained; a failed run
    gives its exit code."""
    lines = ["| run | precision | test NLL | vs the first precision | epochs | s / epoch |", "|---|---|---|---|---|---|"]
    first = {}
    for r in rows:
        if "test_nll" not in r:
            lines.append(f"| {r['run']} | {r['precision']} | failed (exit {r['exit_code']}) | | | |")
            continue
        base = first.setdefault(r["run"], r["test_nll"])
        lines.append(f"| {r['run']} | {r['precision']} | {r['test_nll']:.3f} | {100 * (r['test_nll'] - base) / base:+.2f}% | "
                     f"{r['epochs']} | {r['seconds_per_epoch']:.2f} |")
    return "\n".join(lines)


def markdown_default(rows: list[dict]) -> str:
    lines = ["| threads | wall (s) | epochs | val NLL | val bits/dim | test NLL | test bits/dim | probe share of an epoch (median / mean) | probe s | max SE(H(X))/H(X) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['wall_s']:.1f} | {r['epochs']} | {r['val_nll']:.2f} | {r['val_bpd']:.3f} | "
                     f"{r['test_nll']:.2f} | {r['test_bpd']:.3f} | {100 * r['probe_share_median']:.1f}% / "
                     f"{100 * r['probe_share_mean']:.1f}% | {r['probe_seconds_median']:.4f} | {100 * r['h_x_se_rel_max']:.2f}% |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    density = sub.add_parser("density", help="test NLL of convac's recipes beside libcirkit's and independent variables")
    density.add_argument("--datasets", nargs="*", help="a subset of: " + " ".join(d.name for d in DATASETS))
    density.add_argument("--data-root", type=Path, default=SHARED_DATA, help="folder holding mnist-t10k/ and debd/")
    density.add_argument("--runs", type=Path, default=Path("results"), help="folder for the training runs")
    density.add_argument("--out", type=Path)
    default = sub.add_parser("default-run", help="the default convac-train: time, metrics, probe cost")
    default.add_argument("--threads", nargs="*", default=["null", "1"], help="values of the threads option")
    default.add_argument("--runs", type=Path, default=Path("results"), help="folder for the training runs")
    default.add_argument("--out", type=Path)
    recipe = sub.add_parser("recipe-time", help="the DEBD recipe's wall time on a sampled rows x variables set")
    recipe.add_argument("--rows", type=int, default=15000)
    recipe.add_argument("--variables", type=int, default=100, help="at most 163 (ht_pumsb_star's variables)")
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--runs", type=Path, default=Path("results"), help="folder for the data and the run")
    recipe.add_argument("--out", type=Path)
    precision = sub.add_parser("precision", help="test NLL and seconds per epoch under each trainer.precision")
    precision.add_argument("--precisions", nargs="*", default=["32-true", "bf16-mixed"])
    precision.add_argument("--data-root", type=Path, default=SHARED_DATA, help="folder holding mnist-t10k/")
    precision.add_argument("--runs", type=Path, default=Path("results"), help="folder for the training runs")
    precision.add_argument("--overrides", nargs="*", default=[],
                           help="more convac-train overrides for every run, e.g. trainer=gpu")
    precision.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
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
    elif args.table == "recipe-time":
        result = run_recipe_time(args.runs / "runs" / "recipe_time", args.rows, args.variables, args.seed)
        print(f"{result['command']}: {result['rows']:,} rows x {result['variables']} variables, "
              f"{result['wall_s']:.0f} s, {result['epochs']} epochs, test NLL {result['test_nll']:.3f}")
    elif args.table == "precision":
        result = {"rows": run_precision(args.runs / "runs" / "precision", args.data_root, args.precisions, args.overrides)}
        print(markdown_precision(result["rows"]))
    else:
        result = run_density(args.runs, args.data_root, set(args.datasets) if args.datasets else None)
        print(markdown_density(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
