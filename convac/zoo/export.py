"""Export a ``convac-train`` run of a zoo entry into the package: weights and a measured card."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from convac.data import create_datamodule
from convac.errors import InvalidValueError, MissingFileError
from convac.model import ConvAC
from convac.zoo import evaluate
from convac.zoo.cards import CARDS_DIR, WEIGHTS_DIR, ModelCard, count_parameters, with_local_data
from convac.zoo.entries import ZooEntry
from convac.zoo.pretrained import load_into, read_weights, save_weights
from convac.zoo.registry import create_model


def train_command(entry: ZooEntry) -> str:
    """The ``convac-train`` command line that trains ``entry``."""
    key = entry.local_data_key
    local = f" data.{key}=/path/to/{entry.config().data.name}" if key else ""
    return f"convac-train experiment={entry.experiment}{local}"


def best_checkpoint(run_dir: Path) -> Path:
    """The single ``best-*.ckpt`` of a run folder."""
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if len(found) != 1:
        raise MissingFileError(f"{run_dir}/checkpoints: expected one best-*.ckpt, found {[p.name for p in found]}")
    return found[0]


def last_epoch_entropy(run_dir: Path, model: ConvAC) -> dict[str, Any]:
    """The entropy chain the ``EntropyProbe`` callback logged at the run's last probed epoch
    (the last row of ``entropy.csv``)."""
    with open(run_dir / "entropy.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return {
        "epoch": int(last["epoch"]),
        "levels": [float(last[f"entropy/H{level}"]) for level in range(model.num_levels + 1)],
        "H_X": float(last["entropy/H_X"]),
    }


def export_run(entry: ZooEntry, run_dir: str | Path, data_root: str | None, seconds: float) -> ModelCard:
    """Write ``weights/<name>.safetensors`` and ``cards/<name>.json`` from the best checkpoint
    of ``run_dir`` (a ``convac-train experiment=zoo_<name>`` run that took ``seconds``),
    measuring the test metrics, the entropy chain and the check batch."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    ckpt = best_checkpoint(run_dir)
    weights = read_weights(ckpt)
    if weights.architecture != entry.architecture():
        raise InvalidValueError(
            f"{ckpt} holds {weights.model_name} {weights.model_kwargs}, but experiment={entry.experiment} "
            f"defines {entry.architecture()}; retrain without model overrides"
        )
    model = load_into(create_model(entry.name), weights, entry.name).eval()

    data = dict(cfg["data"])
    datamodule = create_datamodule(**with_local_data(data, data_root))
    if entry.needs_data_root:
        data[entry.local_data_key] = None  # a local folder or file: given again at evaluation time
    metrics = evaluate.test_metrics(model, datamodule)
    if not all(math.isfinite(v) for v in metrics.values()):
        raise InvalidValueError(f"{entry.name}: non-finite test metrics {metrics}")
    entropy = {**evaluate.entropy_chain(model, datamodule.bin_width), "last_epoch": last_epoch_entropy(run_dir, model)}

    path = WEIGHTS_DIR / f"{entry.name}.safetensors"
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    card = ModelCard(
        name=entry.name,
        description=entry.description,
        experiment=entry.experiment,
        command=train_command(entry),
        model_name=weights.model_name,
        model_kwargs=weights.model_kwargs,
        data=data,
        module=cfg["module"],
        training={
            "epochs": cfg["trainer"]["max_epochs"],
            "best_epoch": int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]),
            "seed": cfg["seed"],
            "seconds": round(seconds, 1),
        },
        weights=path.name,
        sha256=save_weights(path, model, weights.model_name, weights.model_kwargs),
        size_bytes=path.stat().st_size,
        num_parameters=count_parameters(model),
        metrics=metrics,
        entropy=entropy,
        check=evaluate.check_batch(model),
    )
    card.save(CARDS_DIR)
    return card
