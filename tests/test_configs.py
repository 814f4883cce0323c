"""Hydra configs: every group composes, validates and builds; schemas reject bad keys and types."""
from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from convac import create_model
from convac.cli.common import build_trainer, setup_data
from convac.config import schema

MODELS = ["ht", "cp", "ht_classifier", "cp_classifier"]
DATA = ["digits", "synthetic"]  # the data configs that need no external files
TRAINERS = ["cpu", "gpu", "ddp", "ddp_cpu", "debug"]
CPU_TRAINERS = ["cpu", "ddp_cpu", "debug"]


@pytest.fixture(scope="module")
def hydra_ctx():
    with initialize_config_module("convac.configs", version_base="1.3"):
        yield


def compose_train(*overrides: str, output_dir="/tmp/convac-test"):
    return compose("train", overrides=[f"output_dir={output_dir}", *overrides])


@pytest.mark.parametrize("model,data", list(itertools.product(MODELS, DATA)))
def test_model_data_compose_and_build(hydra_ctx, model, data):
    cfg = compose_train(f"model={model}", f"data={data}")
    schema.to_object(cfg)
    datamodule = setup_data(cfg)  # fills the layout read from the data into cfg.data
    assert list(cfg.data.in_shape) == list(datamodule.in_shape) == [1, 8, 8]
    kwargs = schema.to_kwargs(cfg.model)
    assert kwargs["in_shape"] == list(cfg.data.in_shape)
    assert kwargs["leaf"] == {"name": "categorical", "num_values": cfg.data.num_values}
    assert kwargs["num_classes"] == (cfg.data.num_classes if "classifier" in model else 1)
    net = create_model(kwargs.pop("name"), **kwargs)
    assert net.in_shape == tuple(cfg.data.in_shape)


@pytest.mark.parametrize("model,data,trainer", list(itertools.product(MODELS, DATA, TRAINERS)))
def test_every_combination_composes(hydra_ctx, model, data, trainer):
    cfg = compose_train(f"model={model}", f"data={data}", f"trainer={trainer}")
    obj = schema.to_object(cfg)
    assert isinstance(obj.model, (schema.HTModelConfig, schema.CPModelConfig))
    assert isinstance(obj.data, schema.DataConfig)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


@pytest.mark.parametrize("trainer", CPU_TRAINERS)
def test_cpu_trainers_instantiate(hydra_ctx, tmp_path, trainer):
    cfg = compose_train(f"trainer={trainer}", output_dir=str(tmp_path))
    built = build_trainer(cfg)
    if trainer == "debug":
        assert built.fast_dev_run
    else:
        assert built.max_epochs == cfg.trainer.max_epochs
        assert built.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")
        assert [type(lg).__name__ for lg in built.loggers] == ["CSVLogger"]


def test_leaf_groups_and_list_values(hydra_ctx):
    cfg = compose_train("model/leaf=gaussian", "data.continuous=true", "model.channels=[8,4,2]", "model.pool=[2,2]",
                        "data.in_shape=[1,8,8]")
    kwargs = schema.to_kwargs(cfg.model)
    assert kwargs["leaf"] == {"name": "gaussian", "min_std": 0.001}
    assert kwargs["channels"] == [8, 4, 2] and kwargs["pool"] == [2, 2]
    create_model(kwargs.pop("name"), **kwargs)
    assert schema.to_kwargs(compose_train("model/leaf=bernoulli").model)["leaf"] == {"name": "bernoulli"}


@pytest.mark.parametrize(
    "experiment,extra",
    [
        ("digits_classifier", []),
        ("digits_gaussian", []),
        ("mnist_t10k_ht", ["data.root=/nowhere"]),
        ("debd_ht", ["data.root=/nowhere"]),
        ("deep_ht64", []),
        ("scaling_digits", ["model=cp"]),
        ("scaling_mnist", ["data.root=/nowhere"]),
        ("scaling_synthetic", []),
    ],
)
def test_experiments_compose(hydra_ctx, experiment, extra):
    cfg = compose_train(f"experiment={experiment}", *extra)
    obj = schema.to_object(cfg)
    if experiment == "digits_classifier":
        assert obj.module.objective == schema.Objective.discriminative and obj.model.num_classes == 10
    if experiment == "digits_gaussian":
        assert obj.data.continuous and obj.model.leaf.name == schema.LeafName.gaussian
    if experiment == "deep_ht64":  # 64x64 -> 1x1 by 2x2 pooling: 6 fusion levels
        assert obj.model.in_shape == [1, 64, 64] and obj.model.pool == 2 and obj.data.name == "synthetic"
    if experiment in ("mnist_t10k_ht", "debd_ht"):  # the shape is read from the files by setup_data
        assert obj.data.in_shape is None and obj.model.in_shape is None
    if experiment == "mnist_t10k_ht":
        assert obj.data.split == schema.IDXSplit.t10k
    if experiment in ("scaling_digits", "scaling_mnist"):  # depth through the input size
        assert obj.data.resize and obj.model.in_shape == obj.data.in_shape
    if experiment == "scaling_synthetic":  # sequences of 2^L variables
        assert obj.model.in_shape == [1, 1, 64]


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.chanels=3", "model.chanels"),
        ("model.num_components=abc", "model.num_components"),
        ("data.batch_size=1.5", "data.batch_size"),
        ("data.split=t10k", "data.split"),  # digits has no split
        ("module.objective=adversarial", "module.objective"),
        ("sed=1", "sed"),
    ],
)
def test_bad_overrides_fail_at_composition(hydra_ctx, override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(override)
    assert key in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override", ["model.channels=abc", "model.channels=[4,x]", "model.pool=[[2,2],[a,2]]", "model.pool=true"])
def test_union_fields_are_checked(hydra_ctx, override):
    cfg = compose_train(override)
    with pytest.raises(ValueError, match=override.split("=")[0]):
        schema.to_object(cfg)


def test_missing_data_root_is_reported(hydra_ctx):
    cfg = compose_train("data=mnist")
    with pytest.raises(Exception, match="data.root|root"):
        schema.to_object(cfg)


def test_eval_config(hydra_ctx):
    cfg = compose("eval", overrides=["ckpt=x.ckpt", "output_dir=/tmp/e"])
    assert cfg.data is None and cfg.missing_fraction == 0.5
    cfg = compose("eval", overrides=["ckpt=x.ckpt", "output_dir=/tmp/e", "data=digits"])
    assert schema.to_kwargs(cfg.data)["name"] == "digits"
    assert instantiate(cfg.trainer).logger is None


def test_resolved_config_is_plain_yaml(hydra_ctx):
    cfg = compose_train()
    text = OmegaConf.to_yaml(cfg, resolve=True)
    assert "${" not in text and "categorical" in text
