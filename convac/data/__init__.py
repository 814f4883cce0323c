"""Lightning DataModules for convac: digits, MNIST / Fashion-MNIST (IDX), DEBD, synthetic, and
your own data: arrays (``.npy`` / ``.npz``), CSV tables and image folders.

``create_datamodule(name, **kwargs)`` builds one by its config name (``data.name``), the
kwargs being the module's constructor arguments. Every module serves ``split(name)`` ->
``(x, y)`` and reads its layout (``in_shape``, ``num_values``, ``num_classes``) from the data
where it is not given (:class:`ConvACDataModule`).
"""
from convac.data.array import ArrayDataModule
from convac.data.base import ConvACDataModule
from convac.data.debd import DEBDDataModule
from convac.data.digits import DigitsDataModule
from convac.data.idx import FashionMNISTDataModule, MNISTDataModule
from convac.data.image_folder import ImageFolderDataModule
from convac.data.synthetic import SyntheticDataModule
from convac.data.table import TableDataModule
from convac.errors import InvalidValueError

DATAMODULES: dict[str, type[ConvACDataModule]] = {
    cls.name: cls
    for cls in (
        DigitsDataModule,
        MNISTDataModule,
        FashionMNISTDataModule,
        DEBDDataModule,
        SyntheticDataModule,
        ArrayDataModule,
        TableDataModule,
        ImageFolderDataModule,
    )
}


def create_datamodule(name: str, **kwargs) -> ConvACDataModule:
    """The DataModule registered as ``name`` (one of :data:`DATAMODULES`), built from ``kwargs``."""
    if name not in DATAMODULES:
        raise InvalidValueError(f"unknown dataset {name!r}; expected one of {sorted(DATAMODULES)}")
    return DATAMODULES[name](**kwargs)


__all__ = [
    "ArrayDataModule",
    "ConvACDataModule",
    "DATAMODULES",
    "DEBDDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "TableDataModule",
    "create_datamodule",
]
