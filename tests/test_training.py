"""ConvACModule: objectives, metrics, fast_dev_run training and checkpoint round trips."""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.nn import functional as F

from convac import ConvACModule
from convac.data import create_datamodule
from convac.training import CSVLogger, atomic
from convac.training.atomic import CsvHistory

LEAF = {"name": "categorical", "num_values": 17}
ARCHS = {
    "ht": {"channels": 4},
    "cp": {"rank": 4},
}


def make_module(arch="ht", num_classes=10, **kwargs) -> ConvACModule:
    model_kwargs = dict(in_shape=[1, 8, 8], leaf=LEAF, num_components=3, num_classes=num_classes, **ARCHS[arch])
    return ConvACModule(arch, model_kwargs, **kwargs)


@pytest.fixture(scope="module")
def digits():
    dm = create_datamodule("digits", batch_size=32)
    dm.setup()
    return dm


def quiet_trainer(**kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("arch", ["ht", "cp"])
@pytest.mark.parametrize("objective", ["generative", "discriminative"])
def test_fast_dev_run(digits, arch, objective):
    module = make_module(arch, objective=objective)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = quiet_trainer(fast_dev_run=2)
    trainer.fit(module, datamodule=digits)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/nll", "val/nll", "val/bpd", "val/acc", "val/loss"} <= set(metrics)
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["val/bpd"]) == pytest.approx(float(metrics["val/nll"]) / (64 * math.log(2)), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_objectives_match_their_formulas(digits):
    x, y = next(iter(digits.val_dataloader()))
    losses = {}
    for objective in ("generative", "discriminative", "hybrid"):
        torch.manual_seed(0)
        module = make_module(objective=objective, hybrid_alpha=0.25)
        losses[objective] = module._step((x, y), "val")
    log_joint = module.model(x) + module.model.log_class_prior()
    joint_nll = -log_joint.gather(1, y[:, None]).mean()
    ce = F.cross_entropy(module.model.log_posterior(x), y)
    torch.testing.assert_close(losses["generative"], joint_nll)
    torch.testing.assert_close(losses["discriminative"], ce)
    torch.testing.assert_close(losses["hybrid"], 0.75 * ce + 0.25 * joint_nll)


def test_density_model_generative_only(digits):
    x, y = next(iter(digits.val_dataloader()))
    module = make_module(num_classes=1)
    torch.testing.assert_close(module._step((x, y), "val"), -module(x).mean())
    with pytest.raises(ValueError, match="needs a classifier"):
        make_module(num_classes=1, objective="discriminative")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(objective="bayes"), "objective must be one of"),
        (dict(hybrid_alpha=2.0), "hybrid_alpha"),
        (dict(optimizer="Adamm"), "torch.optim"),
        (dict(test_missing_fraction=1.0), "test_missing_fraction"),
        (dict(optimizer="em", objective="discriminative"), "objective=generative"),
        (dict(optimizer="em", lr=2.0), "step size"),
        (dict(optimizer="em", em={"pseudocount": -1.0}), "pseudocount"),
        (dict(optimizer="em", em={"pseudo": 1.0}), "unknown EM settings"),
        (dict(scheduler="Cosine"), "lr_scheduler"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_module(**kwargs)


@pytest.mark.parametrize("optimizer, lr, expected", [
    ("Adam", None, 0.01), ("em", None, 0.1), ("em", 0.3, 0.3), ("SGD", 0.2, 0.2),
])
def test_the_learning_rate_defaults_per_optimizer(digits, optimizer, lr, expected):
    """Without ``lr`` EM takes its own step size (0.1), not a gradient optimizer's 0.01."""
    module = make_module(num_classes=1, optimizer=optimizer, lr=lr)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=digits)
    assert module.lr == expected
    assert trainer.optimizers[0].param_groups[0]["lr"] == expected
    assert module.hparams.lr == lr  # the checkpoint keeps what was asked for


def test_checkpoint_reload_gives_identical_log_prob(digits, tmp_path):
    module = make_module("cp", optimizer="SGD", lr=0.1)
    trainer = quiet_trainer(max_steps=3, limit_val_batches=1)
    trainer.fit(module, datamodule=digits)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = ConvACModule.load_from_checkpoint(path, weights_only=True)
    x = digits.split("test")[0][:50]
    assert loaded.hparams == module.hparams
    assert torch.equal(loaded(x), module(x))
    assert torch.load(path, weights_only=True)["datamodule_hyper_parameters"]["name"] == "digits"


def test_missing_data_accuracy_is_logged(digits):
    module = make_module(test_missing_fraction=0.5)
    metrics = quiet_trainer(limit_test_batches=2).test(module, datamodule=digits, verbose=False)[0]
    assert 0.0 <= metrics["test/acc_missing"] <= 1.0 and "test/bpd" in metrics


def test_csv_logger_keeps_rows_of_resumed_run(tmp_path):
    first = CSVLogger(tmp_path, name="", version="")
    first.log_metrics({"a": 1.0}, step=0)
    first.save()
    second = CSVLogger(tmp_path, name="", version="")
    second.log_metrics({"b": 2.0}, step=1)
    second.save()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows == ["a,b,step", "1.0,,0", ",2.0,1"]


def test_csv_history_appends_and_a_resume_replaces_the_rows_after_its_start(tmp_path, monkeypatch):
    path = tmp_path / "entropy.csv"
    history = CsvHistory(path, "epoch")
    for epoch in range(3):
        history.write([{"epoch": epoch, "h": epoch / 2}])
    assert path.read_text().splitlines() == ["epoch,h", "0,0.0", "1,0.5", "2,1.0"]
    rewrites = []
    monkeypatch.setattr(atomic, "write_csv_atomically", lambda *args: rewrites.append(args))
    history.write([{"epoch": 3, "h": 1.5}])  # same columns: appended, not rewritten
    assert rewrites == [] and path.read_text().splitlines()[-1] == "3,1.5"
    history.write([{"epoch": 4}, {"h": 2.5, "epoch": 5}])  # fewer columns, another order: appended
    assert rewrites == [] and path.read_text().splitlines()[-2:] == ["4,", "5,2.5"]
    monkeypatch.undo()
    resumed = CsvHistory(path, "epoch")  # a new process resuming at epoch 2: rows 2 to 5 go
    resumed.write([{"epoch": 2, "h": 9.0, "new": 1}])
    assert path.read_text().splitlines() == ["epoch,h,new", "0,0.0,", "1,0.5,", "2,9.0,1"]
    resumed.write([{"epoch": 3, "other": 4}])  # a new column rewrites the file with the union
    assert [r.get("other") for r in resumed.read()] == [None, None, None, "4"]


@pytest.mark.parametrize("optimizer", ["Adam", "em"])
def test_a_cosine_schedule_anneals_the_step_over_the_epochs(digits, optimizer):
    """Lightning steps the schedule of Adam; EM (manual optimization) steps its own, once per
    epoch, with T_max read from the trainer: after max_epochs the step is eta_min = 0."""
    module = make_module(num_classes=1, optimizer=optimizer, lr=0.1, scheduler="CosineAnnealingLR")
    steps = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            steps.append(trainer.optimizers[0].param_groups[0]["lr"])

    quiet_trainer(max_epochs=4, limit_train_batches=2, limit_val_batches=1, callbacks=[Record()]).fit(module, datamodule=digits)
    expected = [0.1 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]
    assert steps == pytest.approx(expected)


# ---------------------------------------------------------------- the hot path
def test_a_checked_datamodule_turns_the_per_batch_value_checks_off(digits, monkeypatch):
    """A convac datamodule checked every value of its splits when it was set up: after
    ``check_fits`` in ``setup``, the training, validation and test batches skip the model's value
    checks (host reads); batches from plain dataloaders keep them, and the model keeps them for
    its public calls outside the steps."""
    module = make_module()
    checks = []
    check_values = module.model.leaves.check_values
    monkeypatch.setattr(module.model.leaves, "check_values", lambda *a: checks.append(a) or check_values(*a))
    trainer = quiet_trainer(max_steps=2, limit_val_batches=1, limit_test_batches=1)
    trainer.fit(module, datamodule=digits)
    trainer.test(module, datamodule=digits, verbose=False)
    assert module.data_checked and not checks and module.model.validate_args
    x, y = digits.split("val")
    plain = make_module()
    plain_check = plain.model.leaves.check_values
    plain.model.leaves.check_values = lambda *a: checks.append(a) or plain_check(*a)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:8], y[:8]), batch_size=4)
    quiet_trainer(max_steps=1, limit_val_batches=0).fit(plain, train_dataloaders=loader)
    assert not plain.data_checked and len(checks) == 1
    module.model.log_prob(x[:4])
    assert len(checks) == 2


def test_optimizers_with_a_fused_kernel_use_it():
    for name, fused in (("Adam", True), ("AdamW", True), ("SGD", True), ("RMSprop", None)):
        optimizer = make_module(optimizer=name).configure_optimizers()
        assert type(optimizer).__name__ == name and optimizer.defaults.get("fused") is fused


def test_compile_compiles_the_model_forward():
    """``module.compile=true`` compiles the model in place (``nn.Module.compile``: the state dict
    keeps its keys); EM, which reads the layers through forward hooks, refuses it."""
    module = make_module(compile=True)
    assert module.model._compiled_call_impl is not None
    assert list(module.state_dict()) == list(make_module().state_dict())
    with pytest.raises(ValueError, match="compile"):
        make_module(num_classes=1, optimizer="em", lr=0.5, compile=True)
