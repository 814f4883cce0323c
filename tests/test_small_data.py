"""The DEBD recipe's rule for the size of the training set (convac.training.small_data): its
values, its checks, and the recipe config that resolves it from the data read."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from convac.cli.common import setup_data
from convac.config import schema
from convac.training.small_data import (LARGE_SET_PATIENCE, LARGE_SET_STEP, MAX_MEMBERS, MIN_MEMBERS,
                                        early_stopping_patience, em_step, ensemble_members)


@pytest.mark.parametrize("rows,step", [(100_000, 0.2), (10_000, 0.2), (8_000, 0.25), (4_000, 0.5), (2_000, 1.0),
                                       (500, 1.0), (1, 1.0)])
def test_em_step_averages_a_twentieth_of_the_training_set_between_the_large_set_step_and_one(rows, step):
    assert em_step(rows, 100) == pytest.approx(step)
    # the running counts average about batch_size / step examples: at most a 20th of the set
    if LARGE_SET_STEP < step < 1:
        assert 100 / em_step(rows, 100) == pytest.approx(rows / 20)


def test_em_step_scales_with_the_batch_size_and_never_grows_with_the_data():
    assert em_step(4_000, 50) == pytest.approx(em_step(2_000 * 4, 100))
    steps = [em_step(n, 100) for n in range(100, 20_000, 37)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))


@pytest.mark.parametrize("rows,members", [(100_000, 4), (12_262, 4), (8_839, 4), (8_838, 8), (4_420, 8),
                                          (4_419, 16), (2_210, 16), (2_209, 32), (1_600, 32), (500, 32), (1, 32)])
def test_ensemble_members_is_a_power_of_two_giving_an_epoch_about_50000_member_rows(rows, members):
    got = ensemble_members(rows)
    assert got == members and got & (got - 1) == 0 and MIN_MEMBERS <= got <= MAX_MEMBERS
    if MIN_MEMBERS < got < MAX_MEMBERS:  # the nearest power of two in log scale: within a factor sqrt(2)
        assert got / math.sqrt(2) <= 50_000 / rows < got * math.sqrt(2)


def test_the_rule_before_the_data_is_read_gives_the_large_set_values():
    """``train_size`` None (the config check before the files are read) resolves to the large-set
    recipe; the run itself resolves with the size read."""
    assert em_step(None, 100) == LARGE_SET_STEP and ensemble_members(None) == MIN_MEMBERS


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_the_rule_refuses_a_size_that_is_not_a_positive_int(bad):
    with pytest.raises(ValueError, match="data.train_size must be a positive number of examples"):
        ensemble_members(bad)
    with pytest.raises(ValueError, match="data.train_size must be a positive number of examples"):
        em_step(bad, 100)
    with pytest.raises(ValueError, match="data.batch_size must be a positive number of examples"):
        em_step(100, bad)


@pytest.mark.parametrize("step,patience", [(0.2, 5), (0.25, 7), (0.5, 13), (1.0, 25), (0.01, 1)])
def test_early_stopping_patience_grows_with_the_step_from_the_large_set_patience(step, patience):
    assert early_stopping_patience(step) == patience
    assert early_stopping_patience(LARGE_SET_STEP) == LARGE_SET_PATIENCE


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, None, True])
def test_early_stopping_patience_refuses_a_step_outside_zero_one(bad):
    with pytest.raises(ValueError, match=r"module.lr \(the EM step\) must be in \(0, 1\]"):
        early_stopping_patience(bad)


def _debd(root, rows: int) -> None:
    x = np.random.default_rng(0).integers(0, 2, (rows, 6))
    for suffix in ("train", "valid", "test"):
        np.savetxt(root / f"toy.{suffix}.data", x, fmt="%d", delimiter=",")


@pytest.mark.parametrize("rows,cut,step,members,patience", [(300, None, 1.0, 32, 25), (300, 100, 1.0, 32, 25),
                                                            (12_500, None, 0.2, 4, 5), (12_500, 5_000, 0.4, 8, 10)])
def test_the_recipe_resolves_the_rule_from_the_training_rows_read(tmp_path, rows, cut, step, members, patience):
    """``experiment=debd_ht``: ``module.lr``, ``module.ensemble_members``,
    ``model.num_repetitions`` (one tree per member) and early stopping's patience follow
    ``data.train_size`` as the entry points fill it in (after ``data.max_train_rows``); a
    number given overrides the rule."""
    _debd(tmp_path, rows)
    overrides = [f"experiment=debd_ht", f"data.root={tmp_path}", "data.dataset=toy", "output_dir=/tmp/convac-test"]
    if cut is not None:
        overrides.append(f"data.max_train_rows={cut}")
    with initialize_config_module(config_module="convac.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        fixed = compose("train", overrides=[*overrides, "module.lr=0.3", "module.ensemble_members=2"])
    setup_data(cfg)
    assert cfg.data.train_size == (cut or rows)
    assert cfg.module.lr == pytest.approx(step)
    assert cfg.module.ensemble_members == members and cfg.model.num_repetitions == members
    assert cfg.callbacks.early_stopping.patience == patience
    assert schema.to_object(cfg).module.ensemble_members == members
    setup_data(fixed)
    assert fixed.module.lr == 0.3 and fixed.model.num_repetitions == 2
    assert fixed.callbacks.early_stopping.patience == 8
    assert OmegaConf.to_container(fixed.module, resolve=True)["ensemble_members"] == 2
