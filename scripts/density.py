"""The density table of the README: ``python scripts/results.py density [--datasets ...]``.

For every dataset whose files are present (digits is bundled; the others are read from
``../shared/data`` beside the repository, or ``--data-root``), side by side in one run:

* convac: the dataset's recipe (its experiment config) on the grid structure and on the learned
  one, with Adam and with EM (on tables also the learned recipe as one joint mixture, with
  matching trees only, and with Chow-Liu trees read depth-first; on the cuts of each DEBD set to
  its first 500 and 1,600 training rows, ``NAME-ROWS``, the recipe with its small-data rule and
  with the full sets' settings); each row is
  ``convac-train experiment=... <overrides>`` with one thread and the probe off, and reads the
  test NLL of the best checkpoint from its metrics.csv, with the wall time and the
  structure-learning time the run logged (``structure/seconds``);
* libcirkit 0.3.1 with its recipe for that kind of data (``cirkit_recipes.py``);
* the independent-variable model (add-one smoothed frequencies).

Test NLL in nats per example, lower is better. Published numbers of other tractable models, with
their sources, are in ``PUBLISHED`` and printed in a table of their own (they are not re-run).
"""
from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

import cirkit_recipes
from convac.cli.common import setup_data
from convac.zoo.entries import compose_train_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    """A row group of the table: the experiment config that is its convac recipe."""

    name: str
    experiment: str
    data_overrides: tuple[str, ...] = ()
    root: str | None = None  # folder under the data root, None for bundled data
    images: bool = False
    small: bool = False  # a cut of a set's first training rows: the recipe with and without its small-data rule


DATASETS = [
    Dataset("digits", "digits_ht", images=True),
    Dataset("mnist-t10k", "mnist_t10k_ht", root="mnist-t10k", images=True),
    Dataset("nltcs", "debd_ht", ("data.dataset=nltcs",), root="debd"),
    Dataset("plants", "debd_ht", ("data.dataset=plants",), root="debd"),
    Dataset("pumsb_star", "debd_ht", ("data.dataset=pumsb_star",), root="debd"),
    # the first N training rows (validation and test splits whole): sets as small as many users have
    *(Dataset(f"{name}-{rows}", "debd_ht", (f"data.dataset={name}", f"data.max_train_rows={rows}"), root="debd", small=True)
      for rows in (500, 1600) for name in ("nltcs", "plants", "pumsb_star")),
]
# convac variants of each kind of data: (label, overrides on top of the recipe), the recipe first.
# Each optimizer runs with its own settings: EM with the recipe's (step 0.2), Adam with the
# learning rate that did best in our trials (0.03 on DEBD, 0.01 on images) from the default init.
ADAM_DEBD = ("module.optimizer=Adam", "module.lr=0.03", "module.init_std=null")
GRID_DEBD = ("model.structure=grid", "model.num_repetitions=1", "module.ensemble_members=1")  # one tree
VARIANTS = {
    "tabular": [
        ("learned, EM: the recipe", ()),
        ("learned, one joint mixture (no ensemble), EM", ("model.num_repetitions=2", "module.ensemble_members=1",
                                                          "module.em.pseudocount=0.1")),  # two trees as one mixture, beside the ensemble
        ("learned (matching trees only), EM", ("module.structure_learning.trees=[matching]",)),
        ("learned (Chow-Liu trees read depth-first), EM", ("module.structure_learning.trees=[chow_liu,matching]",)),
        ("grid, EM", GRID_DEBD),
        ("learned, Adam", ADAM_DEBD),
        ("grid, Adam", (*GRID_DEBD, *ADAM_DEBD)),
    ],
    "small tabular": [
        ("learned, EM: the recipe", ()),
        ("learned, EM, the settings of the full sets (no small-data rule)",
         ("module.lr=0.2", "module.ensemble_members=4", "callbacks.early_stopping.patience=5")),
    ],
    "images": [
        ("grid, EM: the recipe", ()),
        ("learned, EM", ("model.structure=learned", "model.pool=4")),
        ("grid, Adam", ("module.optimizer=Adam", "module.lr=0.01", "module.init_std=null")),
    ],
}
# Published test NLLs (nats), not re-run here: dataset -> [(model, value, source)]
RAT_SPN_TABLE = "tabulated by Peharz et al., RAT-SPN, UAI 2019"
HCLT_LOGS = ("HCLT, mean of the last epoch of 5 seeds in the training logs of the official code of Liu & Van den "
             "Broeck, NeurIPS 2021 (github.com/UCLA-StarAI/Tractable-PC-Regularization, commit 05743c7, "
             "'non-deterministic PCs/logs_12_4_0.1_0.002_0.001_*'), not the paper's table")
PUBLISHED = {
    "nltcs": [("LearnSPN", 6.11, RAT_SPN_TABLE), ("ID-SPN", 6.02, RAT_SPN_TABLE), ("RAT-SPN", 6.01, RAT_SPN_TABLE),
              ("HCLT (code logs)", 5.999, HCLT_LOGS)],
    "plants": [("LearnSPN", 12.97, RAT_SPN_TABLE), ("ID-SPN", 12.54, RAT_SPN_TABLE), ("RAT-SPN", 13.44, RAT_SPN_TABLE),
               ("HCLT (code logs)", 14.263, HCLT_LOGS)],
    "pumsb_star": [("HCLT (code logs)", 23.648, HCLT_LOGS)],
}


def data_root(dataset: Dataset, base: Path) -> str | None:
    return None if dataset.root is None else str(base / dataset.root)


def independent_baseline(datamodule) -> dict:
    """Fully factorized categorical model, ``P(x) = prod_v f_v(x_v)`` with add-one smoothing,
    fitted on the training split: the test NLL every structured model must beat."""
    (train_x, _), (test_x, _) = datamodule.split("train"), datamodule.split("test")
    v = datamodule.num_values
    counts = torch.nn.functional.one_hot(train_x.flatten(1).long(), v).sum(0).double() + 1.0  # (D, v)
    log_f = (counts / counts.sum(1, keepdim=True)).log()
    nll = -log_f.gather(1, test_x.flatten(1).long().t()).sum(0).mean()
    return {"params": int(log_f.numel()), "test_nll": float(nll)}


def run_training(args: list[str], run_dir: Path) -> tuple[float, list[dict]]:
    """``convac-train ARGS`` into ``run_dir`` (its output dropped): the wall time in seconds and
    the rows of its ``metrics.csv``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "convac.cli.train", *args, f"hydra.run.dir={run_dir}",
                    "trainer.enable_progress_bar=false"], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with (run_dir / "metrics.csv").open(newline="") as f:
        return seconds, list(csv.DictReader(f))


def last_logged(rows: list[dict], key: str) -> float:
    """The last value of ``key`` in the ``metrics.csv`` rows (``test/nll``: the best checkpoint's)."""
    return float([r for r in rows if r.get(key)][-1][key])


def trained_epochs(rows: list[dict]) -> int:
    """The epochs a run trained (validated), from its ``metrics.csv`` rows."""
    return max(int(r["epoch"]) for r in rows if r.get("val/nll")) + 1


def run_convac(dataset: Dataset, overrides: tuple[str, ...], root: str | None, run_dir: Path) -> dict:
    """``convac-train`` (one thread, probe off) and the test metrics of its best checkpoint."""
    args = [f"experiment={dataset.experiment}", *dataset.data_overrides, *overrides, "threads=1", "~callbacks.entropy_probe"]
    args += [f"data.root={root}"] if root else []
    seconds, rows = run_training(args, run_dir)
    structure = [float(r["structure/seconds"]) for r in rows if r.get("structure/seconds")]
    params = sum(v.numel() for k, v in torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"].items()
                 if not k.endswith(("order", "class_logits")))
    return {"test_nll": last_logged(rows, "test/nll"), "seconds": seconds, "epochs": trained_epochs(rows), "params": params,
            "structure_seconds": structure[0] if structure else None, "command": " ".join(["convac-train", *args])}


def run_cirkit(dataset: Dataset, cfg, datamodule) -> list[dict]:
    """libcirkit's recipe for the kind of data (``cirkit_recipes``); for images both region
    graphs, each with libcirkit's clamp and, where that run is clamped, with it lowered."""
    shape, values = tuple(datamodule.in_shape), datamodule.num_values
    if not dataset.images:
        recipe = cirkit_recipes.DEBD_RECIPE
        circuit = cirkit_recipes.compile_circuit(cirkit_recipes.random_binary_trees(math.prod(shape)), values, recipe["units"])
        max_epochs = cirkit_recipes.debd_max_epochs(len(datamodule.split("train")[0]))
        result = cirkit_recipes.train(circuit, datamodule, recipe["lr"], recipe["batch_size"], max_epochs, recipe["patience"])
        return [{"model": f"libcirkit random binary trees (depth 3, R=10, K={recipe['units']})", **result}]
    rows = []
    units = 32 if math.prod(shape) <= 256 else 16
    for name, region_graph in cirkit_recipes.IMAGE_REGION_GRAPHS.items():
        for lowered in (False, True):
            runs = []
            with cirkit_recipes.lowered_clamp() if lowered else nullcontext():
                for lr in cirkit_recipes.IMAGE_RECIPE["lrs"]:
                    circuit = cirkit_recipes.compile_circuit(region_graph(shape), values, units)
                    runs.append({**cirkit_recipes.train(circuit, datamodule, lr, cfg.data.batch_size, cfg.trainer.max_epochs), "lr": lr})
                    if runs[-1]["clamped"]:
                        break  # a clamped circuit cannot learn at any rate
            result = min(runs, key=lambda r: r["best_val_nll"])
            clamp = "clamp lowered" if lowered else "libcirkit's clamp"
            rows.append({"model": f"libcirkit {name} CP (K={units}, Adam {result['lr']:g}, {clamp})", **result})
            if not result["clamped"]:
                break  # a lowered clamp only for the runs the clamp spoils
    return rows


def run_density(out_dir: Path, base: Path, only: set[str] | None = None) -> dict:
    """Every dataset of :data:`DATASETS` whose data is present (or in ``only``)."""
    rows = []
    for dataset in DATASETS:
        if only and dataset.name not in only:
            continue
        root = data_root(dataset, base)
        if root and not Path(root).exists():
            print(f"skipping {dataset.name}: {root} is absent", file=sys.stderr)
            continue
        cfg = compose_train_config([f"experiment={dataset.experiment}", *dataset.data_overrides]
                                   + ([f"data.root={root}"] if root else []))
        datamodule = setup_data(cfg)
        dims = math.prod(datamodule.in_shape)
        kind = "images" if dataset.images else "small tabular" if dataset.small else "tabular"
        for label, overrides in VARIANTS[kind]:
            run_dir = out_dir / "runs" / dataset.name / re.sub(r"\W+", "_", label).strip("_")  # one folder a row
            rows.append({"dataset": dataset.name, "model": f"convac HT ({label})", "dims": dims,
                         **run_convac(dataset, overrides, root, run_dir)})
            print(rows[-1], file=sys.stderr)
        for row in run_cirkit(dataset, cfg, datamodule):
            rows.append({"dataset": dataset.name, "dims": dims, **row})
            print(rows[-1], file=sys.stderr)
        rows.append({"dataset": dataset.name, "model": "independent variables", "dims": dims, "epochs": 0,
                     **independent_baseline(datamodule)})
    for row in rows:
        row["test_bpd"] = row["test_nll"] / (row["dims"] * math.log(2))
    return {"rows": rows, "published": {k: v for k, v in PUBLISHED.items() if not only or k in only}}


def markdown_density(result: dict) -> str:
    lines = ["| dataset | model | params | epochs | test NLL (nats) | bits/dim | train s | structure s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        seconds = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        structure = f"{r['structure_seconds']:.2f}" if r.get("structure_seconds") is not None else "-"
        nll, bpd = f"{r['test_nll']:.3f}", f"{r['test_bpd']:.3f}"
        if r.get("clamped"):  # a constant clamped output, not a likelihood
            nll, bpd = f"fails: clamped, every example gets log P = {-r['test_nll']:.1f}", "-"
        lines.append(f"| {r['dataset']} | {r['model']} | {r['params']:,} | {r['epochs']} | {nll} | {bpd} | {seconds} | {structure} |")
    if result.get("published"):
        lines += ["", "| dataset | published model | test NLL (nats) | source |", "|---|---|---:|---|"]
        for name, entries in result["published"].items():
            lines += [f"| {name} | {model} | {value:.3f} | {source} |" for model, value, source in entries]
    return "\n".join(lines)
