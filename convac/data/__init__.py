"""Lightning DataModules for convac: digits, MNIST / Fashion-MNIST (IDX), DEBD, synthetic.

``create_datamodule(name, **kwargs)`` builds one by its config name (``data.name``), the
kwargs being the module's constructor arguments.
"""
from convac.data.base import ConvACDataModule
from convac.data.debd import DEBDDataModule
from convac.data.digits import DigitsDataModule
from convac.data.idx import FashionMNISTDataModule, MNISTDataModule
from convac.data.synthetic import SyntheticDataModule

DATAMODULES: dict[str, type[ConvACDataModule]] = {
    cls.name: cls
    for cls in (
        DigitsDataModule,
        MNISTDataModule,
        FashionMNISTDataModule,
        DEBDDataModule,
        SyntheticDataModule,
    )
}


def create_datamodule(name: str, **kwargs) -> ConvACDataModule:
    """The DataModule registered as ``name`` (one of :data:`DATAMODULES`), built from ``kwargs``."""
    if name not in DATAMODULES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATAMODULES)}")
    return DATAMODULES[name](**kwargs)


__all__ = [
    "ConvACDataModule",
    "DATAMODULES",
    "DEBDDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "create_datamodule",
]
