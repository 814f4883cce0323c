"""Structured (dataclass) schemas of the configs, registered in Hydra's ConfigStore.

Every yaml file of a group lists its schema first in its defaults (``- /schema/model/ht@_here_``), so a
misspelled key (``model.chanels=3``) or a value of the wrong type (``model.num_components=abc``)
fails at composition, naming the key. OmegaConf 2.3 has no union types: the int-or-list
fields (``channels``, ``pool``) are typed ``Any`` and checked when the config is converted with
:func:`to_object` (the first thing the entry points do), again naming the key.

Model and data configs are ``name`` + the constructor kwargs of ``convac.create_model(name)``
/ ``convac.data.create_datamodule(name)``, one to one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from convac.errors import InvalidValueError


def _check_int_tree(key: str, value: Any, depth: int, what: str) -> None:
    """Raise a ValueError naming ``key`` unless ``value`` is an int or a list (of lists, up to
    ``depth`` levels) of ints."""

    def ok(v: Any, d: int) -> bool:
        if isinstance(v, int) and not isinstance(v, bool):
            return True
        return d > 0 and isinstance(v, (list, tuple)) and len(v) > 0 and all(ok(e, d - 1) for e in v)

    if not ok(value, depth):
        raise InvalidValueError(f"{key}: expected {what}, got {value!r} ({type(value).__name__})")


# ------------------------------------------------------------------------------- model
class LeafName(str, Enum):
    categorical = "categorical"
    bernoulli = "bernoulli"
    gaussian = "gaussian"


class ClassPrior(str, Enum):
    uniform = "uniform"
    learned = "learned"


class Structure(str, Enum):
    grid = "grid"  # the patches' own grid (images), pooled by windows
    learned = "learned"  # balanced binary trees learned from the training split (convac.structure)


@dataclass
class LeafConfig:
    """A leaf family: ``{"name": ..., **kwargs}`` as ``convac.leaves.make_leaf`` takes it
    (unset fields are dropped)."""

    name: LeafName = MISSING
    num_values: Optional[int] = None  # categorical
    min_std: Optional[float] = None  # gaussian


@dataclass
class ModelConfig:
    """Arguments shared by every ConvAC constructor (``name`` picks the registry entry)."""

    name: str = MISSING
    in_shape: Optional[List[int]] = MISSING  # ${data.in_shape}: null until read from the data
    leaf: LeafConfig = field(default_factory=LeafConfig)
    num_components: int = MISSING
    patch_size: int = 1
    num_classes: Optional[int] = 1  # classifiers: ${data.num_classes}, null until read from the data
    share_leaves: bool = False
    share_weights: bool = False
    class_prior: ClassPrior = ClassPrior.uniform


@dataclass
class HTModelConfig(ModelConfig):
    """``HTConvAC``: ``channels`` an int or one int per fusion layer; ``pool`` an int, an
    ``[ph, pw]`` pair or one pair per fusion layer."""

    channels: Any = MISSING
    pool: Any = 2
    structure: Structure = Structure.grid
    num_repetitions: int = 1
    channel_growth: float = 1.0
    max_channels: Optional[int] = None

    def __post_init__(self) -> None:
        _check_int_tree("model.channels", self.channels, 1, "an int or a list of ints")
        _check_int_tree("model.pool", self.pool, 2, "an int, an [h, w] pair or a list of pairs")


@dataclass
class CPModelConfig(ModelConfig):
    """``CPConvAC``: one fusion layer of ``rank`` channels with global product pooling."""

    rank: int = MISSING


# -------------------------------------------------------------------------------- data
class IDXSplit(str, Enum):
    train = "train"  # train-* files (val held out), test on t10k-*
    t10k = "t10k"  # t10k-* only: first 8,000 train (val held out), last 2,000 test


class ImageMode(str, Enum):
    L = "L"  # 8-bit grayscale, one channel
    RGB = "RGB"  # three channels


@dataclass
class DataConfig:
    """Arguments shared by every DataModule (see ``convac.data.base.ConvACDataModule``).

    ``in_shape``, ``num_values``, ``num_classes`` and ``train_size`` are read from the data when
    null (a given value is checked against it); the entry points fill the values read into the
    config (``convac.cli.common.setup_data``) before the model's ``${data.in_shape}`` (and a
    recipe's ``${data.train_size}``) is resolved."""

    name: str = MISSING
    in_shape: Optional[List[int]] = None
    num_values: Optional[int] = None
    num_classes: Optional[int] = None
    batch_size: int = 64
    num_workers: int = 0
    seed: int = 0
    val_fraction: float = 0.1
    continuous: bool = False
    resize: bool = False  # serve the samples resized to in_shape (area means): depth sweeps
    train_size: Optional[int] = None  # the number of training examples, read from the data


@dataclass
class HeldOutDataConfig(DataConfig):
    """Data without a test split of its own: ``test_fraction`` of it is held out (seeded)."""

    test_fraction: float = 0.2


@dataclass
class DigitsDataConfig(HeldOutDataConfig):
    """scikit-learn's 8x8 digits (bundled)."""


@dataclass
class IDXDataConfig(DataConfig):
    root: str = MISSING
    split: IDXSplit = IDXSplit.train


@dataclass
class DEBDDataConfig(DataConfig):
    root: str = MISSING
    dataset: str = MISSING
    max_train_rows: Optional[int] = None  # only the first N training rows (small-data cuts); null: all


@dataclass
class ArrayDataConfig(HeldOutDataConfig):
    path: str = MISSING


@dataclass
class TableDataConfig(HeldOutDataConfig):
    path: str = MISSING
    label_column: Optional[str] = None
    header: Optional[bool] = None
    delimiter: str = ","


@dataclass
class ImageFolderDataConfig(HeldOutDataConfig):
    root: str = MISSING
    size: Optional[List[int]] = None
    mode: Optional[ImageMode] = None


@dataclass
class SyntheticDataConfig(DataConfig):
    """The teacher's layout is a setting here, not read from data."""

    in_shape: List[int] = MISSING
    num_values: int = MISSING
    num_classes: int = MISSING
    num_components: int = MISSING
    channels: Any = MISSING
    sharpness: float = MISSING
    num_train: int = MISSING
    num_val: int = MISSING
    num_test: int = MISSING

    def __post_init__(self) -> None:
        _check_int_tree("data.channels", self.channels, 1, "an int or a list of ints")


# ----------------------------------------------------------------------- entry points
class Objective(str, Enum):
    generative = "generative"
    discriminative = "discriminative"
    hybrid = "hybrid"


@dataclass
class EMConfig:
    """``convac.training.em.EM`` settings (``module.optimizer=em``; the step size is ``module.lr``)."""

    pseudocount: float = 0.1
    full_batch: bool = False


@dataclass
class StructureLearningConfig:
    """``convac.structure.learn_structure`` arguments (``model.structure=learned``)."""

    seed: int = 0
    bins: int = 8
    max_rows: int = 10_000
    noise: float = 1.0
    normalized: bool = True
    trees: List[str] = field(default_factory=lambda: ["matching"])


@dataclass
class ModuleConfig:
    """The ``ConvACModule`` arguments other than the model."""

    objective: Objective = Objective.generative
    hybrid_alpha: float = 0.1
    optimizer: str = "Adam"
    lr: Optional[float] = None  # ConvACModule.lr: 0.01, or 0.1 for EM
    weight_decay: float = 0.0
    em: EMConfig = field(default_factory=EMConfig)
    scheduler: Optional[str] = None
    scheduler_kwargs: Dict[str, Any] = field(default_factory=dict)
    structure_learning: StructureLearningConfig = field(default_factory=StructureLearningConfig)
    ensemble_members: int = 1
    data_softening: float = 0.0
    init_std: Optional[float] = None
    compile: bool = False


@dataclass
class TrainConfig:
    """``convac-train``. ``trainer``, ``callbacks`` and ``logger`` are ``_target_`` entries
    checked by their constructors; ``model`` and ``data`` carry their group's schema."""

    model: Any = MISSING
    data: Any = MISSING
    module: ModuleConfig = field(default_factory=ModuleConfig)
    trainer: Any = MISSING
    callbacks: Any = field(default_factory=dict)
    logger: Any = field(default_factory=dict)
    seed: int = 0
    threads: Optional[int] = None  # torch.set_num_threads; None keeps torch's default
    ckpt_path: Optional[str] = None  # "last" resumes the run in hydra.run.dir
    test: bool = True  # evaluate the best checkpoint on the test split after training
    output_dir: str = MISSING
    tags: List[str] = field(default_factory=list)  # labels: config.yaml, and the loggers that take tags
    optimized_metric: Optional[str] = "val/loss"  # what the run returns to a sweeper (hparams_search/)


@dataclass
class EvalConfig:
    """``convac-eval``: ``data`` defaults to the data the checkpoint was trained on."""

    ckpt: str = MISSING
    data: Any = None
    trainer: Any = MISSING
    missing_fraction: float = 0.5
    seed: int = 0
    threads: Optional[int] = None
    output_dir: str = MISSING


def register() -> None:
    """Store the schemas (idempotent) in the ``schema`` group: ``schema/train``,
    ``schema/eval``, ``schema/model/{ht,cp}``, ``schema/data/{digits,idx,debd,synthetic,array,table,
    image_folder}``;
    a yaml file extends one with ``- /schema/model/ht@_here_`` in its defaults. Also registers
    the recipes' resolvers (``${convac.em_step:...}``, :mod:`convac.training.small_data`)."""
    from convac.training.small_data import register_resolvers

    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=TrainConfig)
    cs.store(group="schema", name="eval", node=EvalConfig)
    cs.store(group="schema/model", name="ht", node=HTModelConfig)
    cs.store(group="schema/model", name="cp", node=CPModelConfig)
    cs.store(group="schema/data", name="digits", node=DigitsDataConfig)
    cs.store(group="schema/data", name="idx", node=IDXDataConfig)
    cs.store(group="schema/data", name="debd", node=DEBDDataConfig)
    cs.store(group="schema/data", name="synthetic", node=SyntheticDataConfig)
    cs.store(group="schema/data", name="array", node=ArrayDataConfig)
    cs.store(group="schema/data", name="table", node=TableDataConfig)
    cs.store(group="schema/data", name="image_folder", node=ImageFolderDataConfig)


def to_object(cfg: DictConfig) -> Any:
    """Resolve ``cfg`` and convert it to its dataclasses, which runs the union checks above."""
    return OmegaConf.to_object(cfg)


def to_kwargs(node: DictConfig) -> dict[str, Any]:
    """A model / data node as plain ``(name, kwargs)``-style dict: resolved, enums as strings,
    unset (None) leaf fields dropped. The result is what ``create_model`` /
    ``create_datamodule`` take and what checkpoints store."""
    kwargs = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    if isinstance(kwargs.get("leaf"), dict):
        kwargs["leaf"] = {k: v for k, v in kwargs["leaf"].items() if v is not None}
    return kwargs


register()
