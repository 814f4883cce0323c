"""EM (convac.training.em) against the closed-form update of an independent probability-space circuit."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from convac import Bernoulli, Categorical, ConvACModule, CPConvAC, Gaussian, HTConvAC
from convac.data import create_datamodule
from convac.training.em import EM, FlowRecorder


def build(leaf, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = HTConvAC((1, 1, 4), leaf, num_components=2, channels=[3, 2], **kwargs).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    return model


def naive_log_likelihood(model, x, params):
    """``sum_x log P(x)`` of a binary HT over 4 variables written out in probability space from
    free (unnormalized) parameters ``params``: leaf densities ``leaf`` (P, B, M), sum weights
    ``w1`` (4, K1, M), ``w2`` (2, K2, K1), root ``w3`` (K2,)."""
    s1 = torch.einsum("pja,pba->pbj", params["w1"], params["leaf"])  # (4, B, K1)
    p1 = s1[0::2] * s1[1::2]  # products of pairs: (2, B, K1)
    s2 = torch.einsum("pja,pba->pbj", params["w2"], p1)  # (2, B, K2)
    p2 = s2[0] * s2[1]  # (B, K2)
    return (p2 @ params["w3"]).log().sum()


def closed_form_counts(model, x, leaf_values):
    """Expected counts by the classic identity ``n = theta * d log L / d theta`` on the naive circuit."""
    params = {
        "leaf": leaf_values.clone().requires_grad_(),
        "w1": model.sums[0].weights().detach().clone().requires_grad_(),
        "w2": model.sums[1].weights().detach().clone().requires_grad_(),
        "w3": model.root.weights()[0, 0].detach().clone().requires_grad_(),
    }
    naive_log_likelihood(model, x, params).backward()
    return {k: v.detach() * v.grad for k, v in params.items()}


def em_step(model, x, lr=1.0, pseudocount=0.0):
    optimizer = EM(model, lr=lr, pseudocount=pseudocount)
    (-model.log_prob(x).sum()).backward()
    optimizer.accumulate()
    optimizer.step()
    optimizer.zero_grad()
    optimizer.remove_hooks()


def full_batch_log_likelihoods(model, x, steps):
    """``sum_x log P(x)`` before each of ``steps`` full-batch EM steps and after the last."""
    lls = []
    for _ in range(steps):
        with torch.no_grad():
            lls.append(model.log_prob(x).sum().item())
        em_step(model, x)
    with torch.no_grad():
        lls.append(model.log_prob(x).sum().item())
    return lls


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "layer-by-layer"])
@pytest.mark.parametrize("pseudocount", [0.0, 0.5])
def test_full_batch_step_equals_the_closed_form_categorical(pseudocount, fold):
    model = build(Categorical(3))
    model.fold_leaf_sums = fold  # the likelihood pass folds the leaves into the first sums
    x = torch.randint(0, 3, (40, 1, 1, 4), generator=torch.Generator().manual_seed(1))
    f = model.leaves.log_probabilities().detach().exp()  # (P, 1, values, M)
    leaf_values = f[torch.arange(4).view(4, 1), 0, x.view(40, 4).t()]  # (P, B, M): f_{p,m}(x_p)
    counts = closed_form_counts(model, x, leaf_values)
    # leaf counts: the component's responsibility for every observed value
    leaf_counts = torch.zeros(4, 3, 2, dtype=torch.float64)
    for p in range(4):
        leaf_counts[p].index_add_(0, x.view(40, 4)[:, p], counts["leaf"][p])

    def normalized(c, dim):  # the pseudocount is shared by the entries of each distribution
        c = c + pseudocount / c.shape[dim]
        return c / c.sum(dim, keepdim=True)

    em_step(model, x, pseudocount=pseudocount)
    torch.testing.assert_close(model.sums[0].weights(), normalized(counts["w1"], -1))
    torch.testing.assert_close(model.sums[1].weights(), normalized(counts["w2"], -1))
    torch.testing.assert_close(model.root.weights()[0, 0], normalized(counts["w3"], -1))
    torch.testing.assert_close(model.leaves.log_probabilities().exp()[:, 0], normalized(leaf_counts, 1))


def test_full_batch_step_equals_the_closed_form_gaussian():
    model = build(Gaussian(min_std=1e-3))
    x = torch.randn(60, 1, 1, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean, std = model.leaves.mean.detach()[:, 0], model.leaves.std().detach()[:, 0]  # (P, M)
    leaf_values = torch.distributions.Normal(mean.unsqueeze(1), std.unsqueeze(1)).log_prob(x.view(60, 4).t().unsqueeze(-1)).exp()
    r = closed_form_counts(model, x, leaf_values)["leaf"]  # (P, B, M) responsibilities
    xs = x.view(60, 4).t().unsqueeze(-1)  # (P, B, 1)
    new_mean = (r * xs).sum(1) / r.sum(1)
    new_var = (r * (xs - new_mean.unsqueeze(1)) ** 2).sum(1) / r.sum(1)
    em_step(model, x)
    torch.testing.assert_close(model.leaves.mean[:, 0], new_mean)
    torch.testing.assert_close(model.leaves.std()[:, 0] ** 2, new_var)


@pytest.mark.parametrize("leaf", [Categorical(3), Gaussian(min_std=0.05)], ids=["categorical", "gaussian"])
def test_full_batch_em_never_lowers_the_training_likelihood(leaf):
    model = build(leaf, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 3, (80, 1, 1, 4), generator=g) if isinstance(leaf, Categorical) else torch.randn(80, 1, 1, 4, generator=g, dtype=torch.float64)
    lls = full_batch_log_likelihoods(model, x, 6)
    assert all(b >= a - 1e-9 for a, b in zip(lls, lls[1:])), lls


DISCRETE_LEAVES = [Categorical(3), Bernoulli()]


def partly_missing(leaf, rows, seed):
    """``rows`` examples of 4 variables of ``leaf``'s values with about 30% of every column missing."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, leaf.num_values, (rows, 1, 1, 4), generator=g)
    missing = torch.rand(x.shape, generator=g) < 0.3
    assert missing.any(0).all() and (~missing).any(0).all()  # every column partly missing
    return x, missing


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "layer-by-layer"])
@pytest.mark.parametrize("leaf", DISCRETE_LEAVES, ids=["categorical", "bernoulli"])
def test_full_batch_step_with_missing_values_equals_the_closed_form(leaf, fold):
    """A missing variable is marginalized in the E-step: its leaf's expected count of value ``v``
    is ``f(v) * r`` (``r`` the component's responsibility), beside the observed rows' ``r``."""
    model = build(leaf, seed=5)
    model.fold_leaf_sums = fold
    x, missing = partly_missing(leaf, 40, seed=6)
    f = model.leaves.log_probabilities().detach().exp()[:, 0]  # (P, values, M)
    codes = x.view(40, 4).t()  # (P, B)
    observed_values = f[torch.arange(4).view(4, 1), codes]  # (P, B, M)
    leaf_values = torch.where(missing.view(40, 4).t().unsqueeze(-1), torch.ones_like(observed_values), observed_values)
    r = closed_form_counts(model, x, leaf_values)["leaf"]  # (P, B, M): responsibilities (leaf value 1 when missing)
    absent = missing.view(40, 4).t()
    leaf_counts = torch.zeros_like(f)  # (P, values, M)
    for p in range(4):
        leaf_counts[p].index_add_(0, codes[p][~absent[p]], r[p][~absent[p]])
        leaf_counts[p] += f[p] * r[p][absent[p]].sum(0)  # expected counts of the marginalized values
    optimizer = EM(model, lr=1.0, pseudocount=0.0)
    (-model.log_prob(x, missing).sum()).backward()
    optimizer.accumulate()
    optimizer.step()
    optimizer.remove_hooks()
    torch.testing.assert_close(model.leaves.log_probabilities().exp()[:, 0], leaf_counts / leaf_counts.sum(1, keepdim=True))


@pytest.mark.parametrize("leaf", DISCRETE_LEAVES, ids=["categorical", "bernoulli"])
def test_flows_with_missing_values_are_those_of_the_layer_by_layer_pass(leaf):
    """The folded likelihood pass gives every level's flows (and every gradient) of the
    layer-by-layer pass on partly missing columns."""
    x, missing = partly_missing(leaf, 40, seed=7)
    flows, grads = {}, {}
    for fold in (True, False):
        model = build(leaf, seed=8)
        model.fold_leaf_sums = fold
        recorder = FlowRecorder(model)
        (-model.log_prob(x, missing).sum()).backward()
        recorder.accumulate()
        recorder.remove()
        flows[fold] = [*recorder.flows, recorder.root]
        grads[fold] = [p.grad for p in model.parameters()]
    for level, (a, b) in enumerate(zip(flows[True], flows[False])):
        torch.testing.assert_close(a, b, msg=f"flows of level {level}")
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("leaf", DISCRETE_LEAVES, ids=["categorical", "bernoulli"])
def test_full_batch_em_with_missing_values_does_not_depend_on_the_batch_size(leaf):
    """Full-batch EM adds the counts of all batches: 20 batches of 2 rows through the
    layer-by-layer pass and one batch of 40 through the folded pass give the same M-step."""
    x, missing = partly_missing(leaf, 40, seed=9)
    models = {}
    for batch in (2, 40):
        model = models[batch] = build(leaf, seed=10)
        model.fold_leaf_sums = batch == 40
        optimizer = EM(model, lr=1.0, pseudocount=0.0, dataset_size=len(x))
        for start in range(0, len(x), batch):
            (-model.log_prob(x[start:start + batch], missing[start:start + batch]).sum()).backward()
            optimizer.accumulate()
        optimizer.step()
        optimizer.remove_hooks()
    for (name, a), b in zip(models[2].state_dict().items(), models[40].state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)


def test_em_rejects_bad_settings():
    model = build(Categorical(3))
    with pytest.raises(ValueError, match="step size"):
        EM(model, lr=0.0)
    with pytest.raises(ValueError, match="pseudocount"):
        EM(model, pseudocount=-1.0)
    with pytest.raises(RuntimeError, match="accumulate"):
        EM(model).step()


def test_shared_parameters_pool_their_counts_and_stay_monotone():
    """Shared leaves and weights take the counts of every position together: full-batch EM on a CP
    model with both shared never lowers the likelihood (a wrongly pooled count would)."""
    torch.manual_seed(7)
    model = CPConvAC((1, 2, 2), Categorical(3), num_components=2, rank=3, share_leaves=True, share_weights=True).double()
    x = torch.randint(0, 3, (50, 1, 2, 2), generator=torch.Generator().manual_seed(8))
    lls = full_batch_log_likelihoods(model, x, 5)
    assert all(b >= a - 1e-9 for a, b in zip(lls, lls[1:])), lls


# ------------------------------------------------------------------- EM through Lightning
EM_RUN = ["threads=1", "model.num_components=3", "model.channels=4", "trainer.enable_progress_bar=false",
          "~callbacks.entropy_probe", "~callbacks.model_summary", "test=false", "module.optimizer=em"]


def train_cli(run: Path, *overrides: str) -> dict[str, torch.Tensor]:
    """``convac-train`` in a subprocess; the model's state in the run's last checkpoint."""
    result = subprocess.run([sys.executable, "-m", "convac.cli.train", f"hydra.run.dir={run}", *EM_RUN, *overrides],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return ConvACModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True).model.state_dict()


def test_full_batch_em_under_ddp_equals_one_process(tmp_path):
    """Two gloo processes, each on half of the training split (1,294 digits: 647 each, none padded),
    sum their counts into the same M-step as one process on all of it."""
    full_batch = ["module.lr=1.0", "module.em.full_batch=true", "trainer.max_epochs=2"]
    one = train_cli(tmp_path / "one", *full_batch)
    two = train_cli(tmp_path / "two", *full_batch, "trainer=ddp_cpu")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


def em_module_and_trainer(folder: Path, epochs: int, full_batch: bool):
    module = ConvACModule("ht", dict(in_shape=[1, 8, 8], leaf={"name": "categorical", "num_values": 17},
                                     num_components=3, channels=4), optimizer="em", lr=0.3,
                          em={"pseudocount": 1.0, "full_batch": full_batch})
    trainer = L.Trainer(max_epochs=epochs, default_root_dir=folder, enable_progress_bar=False, logger=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1,
                        callbacks=[ModelCheckpoint(dirpath=folder, save_last=True)])
    return module, trainer


@pytest.mark.parametrize("full_batch", [False, True], ids=["mini-batch", "full-batch"])
def test_a_resumed_em_run_equals_an_uninterrupted_one(tmp_path, full_batch):
    """The running statistics live in the optimizer's state (saved in checkpoints) and the batch
    order depends only on the seed and the epoch: 2 + 1 epochs give the parameters of 3."""
    torch.manual_seed(0)
    module, trainer = em_module_and_trainer(tmp_path / "straight", 3, full_batch)
    trainer.fit(module, datamodule=create_datamodule("digits"))
    torch.manual_seed(0)
    first, trainer = em_module_and_trainer(tmp_path / "resumed", 2, full_batch)
    trainer.fit(first, datamodule=create_datamodule("digits"))
    torch.manual_seed(123)  # the resumed run's own seed does not matter
    resumed, trainer = em_module_and_trainer(tmp_path / "resumed", 3, full_batch)
    trainer.fit(resumed, datamodule=create_datamodule("digits"), ckpt_path=tmp_path / "resumed" / "last.ckpt")
    for (name, a), b in zip(module.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)


def forward_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_fitting_removes_the_em_hooks_and_a_second_fit_equals_a_separate_one(tmp_path):
    """EM's flow recorder hooks the model only while fitting: afterwards no hook is left (no
    forward pass retains gradients), and fitting the same module again gives what a new module
    loaded with its weights gives."""
    torch.manual_seed(0)
    module, trainer = em_module_and_trainer(tmp_path / "first", 1, False)
    trainer.fit(module, datamodule=create_datamodule("digits"))
    assert forward_hooks(module.model) == 0
    x = torch.randint(0, 17, (3, 1, 8, 8))
    with torch.enable_grad():
        assert not module.model.level_log_probs(x)[0].retains_grad
    separate = ConvACModule(**module.hparams)
    separate.model.load_state_dict(module.model.state_dict())
    for fitted in (module, separate):
        _, trainer = em_module_and_trainer(tmp_path / "again", 1, False)
        trainer.fit(fitted, datamodule=create_datamodule("digits"))
        assert forward_hooks(fitted.model) == 0
    for (name, a), b in zip(module.model.state_dict().items(), separate.model.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)


def test_em_as_a_context_manager_removes_its_hooks():
    model = build(Categorical(3))
    with EM(model) as optimizer:
        assert forward_hooks(model) == len(optimizer.recorder._handles) > 0
    assert forward_hooks(model) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_value_no_example_shows_keeps_a_finite_logit_without_pseudocount(dtype):
    """With pseudocount 0 a value unseen in the data gets the dtype's smallest normal
    probability, not ``log 0 = -inf`` (whose entropy term ``0 * -inf`` would be NaN)."""
    model = build(Categorical(3)).to(dtype)
    x = torch.randint(0, 2, (40, 1, 1, 4), generator=torch.Generator().manual_seed(11))  # value 2 never occurs
    em_step(model, x, pseudocount=0.0)
    log_p = model.leaves.log_probabilities()
    assert torch.isfinite(log_p).all()
    assert (log_p[:, :, 2] <= math.log(torch.finfo(dtype).tiny) + 1e-3).all()  # the unseen value: ~ tiny
    assert torch.isfinite(model.leaf_entropy()).all()
