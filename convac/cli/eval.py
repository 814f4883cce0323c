"""``convac-eval ckpt=PATH [data=...]``: test NLL, bits/dim, accuracy and accuracy under
missing data of a checkpoint written by ``convac-train``.

Without ``data=...`` the data settings stored in the checkpoint are used. The metrics are
printed and written to ``metrics.json`` in the run folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from convac.cli.common import build_trainer, start
from convac.configs import schema
from convac.data import create_datamodule
from convac.training import ConvACModule


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt``; returns the ``test/...`` metrics."""
    start(cfg)
    ckpt = Path(cfg.ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt={cfg.ckpt}: no such checkpoint file")
    module = ConvACModule.load_from_checkpoint(
        ckpt, map_location="cpu", weights_only=True, test_missing_fraction=cfg.missing_fraction
    )
    if cfg.data is not None:
        data_kwargs = schema.to_kwargs(cfg.data)
    else:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        if "datamodule_hyper_parameters" not in saved:
            raise ValueError(f"{ckpt} stores no data settings; pass data=... (e.g. data=digits)")
        data_kwargs = dict(saved["datamodule_hyper_parameters"])
    datamodule = create_datamodule(**data_kwargs)

    metrics = build_trainer(cfg).test(module, datamodule=datamodule)[0]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"ckpt": str(ckpt), **metrics}, indent=2))
    print(f"\nmetrics written to {out / 'metrics.json'}")
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://convac.configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    """Console entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
