"""``convac-claims ckpt=PATH [num_samples=N] [seed=S] [bin_width=W]``: the paper's claims on a model.

``ckpt`` is anything :func:`convac.load_pretrained` accepts: a zoo name, a ``.safetensors``
file, or a ``convac-train`` checkpoint (read with ``weights_only=True``).

Prints the entropy report, then every claim: the measured ones (Def 4, Thm 3, Assumption 1,
Thms 4 and 5) marked ``holds`` / ``FAILS`` / ``n/a``, Thms 1 and 2 marked ``identity`` (they
follow from the definitions of sigmoid and ReLU and hold for every input, so they are no
evidence about the model), and a last line counting the measured claims only.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from convac import load_pretrained
from convac.cli.common import exit_on_error
from convac.entropy import probe
from convac.entropy.claims import check_claims, format_claims


@dataclass
class ClaimsConfig:
    ckpt: str = "???"
    num_samples: int = 1024
    seed: int = 0
    bin_width: Optional[float] = None


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ClaimsConfig), OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv))
        ckpt = cfg.ckpt
    except OmegaConfBaseException as err:
        sys.exit(f"convac-claims: error: {err}")
    with exit_on_error("convac-claims"):
        model = load_pretrained(ckpt)
        report = probe(model, num_samples=cfg.num_samples, seed=cfg.seed, bin_width=cfg.bin_width)
    print(report.summary())
    print(format_claims(check_claims(model, report, seed=cfg.seed)))


if __name__ == "__main__":
    main()
