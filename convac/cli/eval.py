"""``convac-eval ckpt=PATH [data=...]``: test NLL, bits/dim, accuracy and accuracy under
missing data of a checkpoint written by ``convac-train``.

Without ``data=...`` the data settings stored in the checkpoint are used. The metrics are
printed and written to ``metrics.json`` in the run folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from convac.cli.common import (build_trainer, hydra_errors_raised, make_run_folder, read_checkpoint,
                               setup_data, start, task_errors)
from convac.data import create_datamodule
from convac.errors import InvalidValueError
from convac.training import ConvACModule


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt``; returns the ``test/...`` metrics."""
    start(cfg)
    saved = read_checkpoint(cfg.ckpt, "ckpt")
    if cfg.data is not None:
        datamodule = setup_data(cfg)
    elif "datamodule_hyper_parameters" in saved:
        datamodule = create_datamodule(**saved["datamodule_hyper_parameters"])
        datamodule.setup()
    else:
        raise InvalidValueError(f"ckpt={cfg.ckpt} stores no data settings; pass data=... (e.g. data=digits)")
    module = ConvACModule.load_from_checkpoint(
        cfg.ckpt, map_location="cpu", weights_only=True, test_missing_fraction=cfg.missing_fraction
    )
    datamodule.check_fits(module.model, "the checkpoint's model")
    out = Path(cfg.output_dir)
    make_run_folder(out)  # an unwritable folder fails before the test runs

    metrics = build_trainer(cfg).test(module, datamodule=datamodule)[0]
    (out / "metrics.json").write_text(json.dumps({"ckpt": str(cfg.ckpt), **metrics}, indent=2))
    print(f"\nmetrics written to {out / 'metrics.json'}")
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://convac.configs", config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra application: evaluates ``cfg.ckpt``."""
    with task_errors("convac-eval"):
        evaluate(cfg)


def main() -> None:
    """Console entry point; a config mistake or a user's error (bad checkpoint, data or folder)
    exits 1 with a one-line message."""
    with hydra_errors_raised("convac-eval"):
        hydra_main()


if __name__ == "__main__":
    main()
