"""``convac-claims ckpt=PATH [num_samples=N] [seed=S] [bin_width=W]``: the paper's claims on a model.

``ckpt`` is a Lightning checkpoint of ``ConvACModule`` (loaded with ``weights_only=True``) or
anything :func:`convac.load_pretrained` accepts (a zoo name or a ``.safetensors`` file).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from convac.entropy import DEFAULT_NUM_SAMPLES, probe
from convac.entropy.claims import check_claims, format_claims


@dataclass
class ClaimsConfig:
    ckpt: str = "???"
    num_samples: int = DEFAULT_NUM_SAMPLES
    seed: int = 0
    bin_width: Optional[float] = None


def load_model(path: str):
    """The network of a ``.ckpt`` file, or a zoo entry / ``.safetensors`` file."""
    if path.endswith(".ckpt"):
        from convac.training import ConvACModule

        return ConvACModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).model
    from convac import load_pretrained

    return load_pretrained(path)


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ClaimsConfig), OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv))
        ckpt = cfg.ckpt
    except OmegaConfBaseException as err:
        sys.exit(f"convac-claims: error: {err}")
    model = load_model(ckpt)
    report = probe(model, num_samples=cfg.num_samples, seed=cfg.seed, bin_width=cfg.bin_width)
    print(report.summary())
    print(format_claims(check_claims(model, report, seed=cfg.seed)))


if __name__ == "__main__":
    main()
