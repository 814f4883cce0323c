"""libcirkit 0.3.1 baselines for the density table, each with the recipe its authors use for that
kind of data (``pip install -e ".[bench]"``, or ``pip install --no-deps libcirkit==0.3.1
opt_einsum einops graphviz`` to keep your numpy and scipy).

* Binary tabular data (DEBD): random binary trees (``RandomBinaryTree``, depth 3, 10
  repetitions: RAT-SPN's region graph), CP sum-product layers, K = 20 input and sum units,
  categorical inputs, Adam 0.01, batch 100, up to 30 epochs, stopped after 5 epochs without a
  better validation NLL. On a small training set 30 epochs are few Adam steps (150 at 500 rows,
  against 3,700 to 5,300 on the full DEBD sets), and the model is still improving when they
  end: the epoch bound there gives at least :data:`DEBD_MIN_STEPS` steps
  (:func:`debd_max_epochs`), and early stopping ends the run.
* Images: the quad-tree (``QuadTree``, 4-way splits) and the quad-graph (``QuadGraph``) region
  graphs, CP layers, Adam at 0.01 (libcirkit's MNIST tutorial, ``notebooks/learning-a-circuit.ipynb``)
  and at 0.1, the one with the better validation NLL kept, with our recipe's batch size and
  epochs (with the tutorial's batch of 256 and rate 0.01 the 1,294 training digits get 5 steps an
  epoch and reach 105 nats in 40 epochs, against 91 at batch 64 and rate 0.1). libcirkit clamps every
  log-value at ``LOG_CLAMP_MIN`` (about -708.4, ``log`` of float64's smallest normal number): a
  28x28 image has a log-likelihood far below that, so the clamped circuit gives every image the
  same value and cannot train. :func:`lowered_clamp` lowers it for a run; the table reports both.

Every baseline reads the same splits as ours (``datamodule.split``) and reports the test NLL
(nats per example) at the epoch of best validation NLL.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from typing import Iterator

import torch

DEBD_RECIPE = dict(depth=3, num_repetitions=10, units=20, lr=0.01, batch_size=100, max_epochs=30, patience=5)
DEBD_MIN_STEPS = 3_000  # Adam steps the epoch bound allows at least (30 epochs of 10,000 rows)


def debd_max_epochs(train_rows: int) -> int:
    """The epoch bound of the DEBD recipe for ``train_rows`` training rows: 30, or more on small
    sets, enough for :data:`DEBD_MIN_STEPS` batches (600 epochs at 500 rows, 188 at 1,600)."""
    steps_per_epoch = math.ceil(train_rows / DEBD_RECIPE["batch_size"])
    return max(DEBD_RECIPE["max_epochs"], math.ceil(DEBD_MIN_STEPS / steps_per_epoch))


IMAGE_RECIPE = dict(lrs=(0.01, 0.1))  # Adam learning rates tried; the better validation NLL is kept


def compile_circuit(region_graph, num_values: int, units: int) -> torch.nn.Module:
    """A region graph as a CP circuit with categorical inputs and softmax sum weights, compiled
    for the torch backend in the ``lse-sum`` semiring (libcirkit's defaults: folded, optimized)."""
    from cirkit.pipeline import PipelineContext
    from cirkit.templates.utils import Parameterization, name_to_input_layer_factory, parameterization_to_factory

    circuit = region_graph.build_circuit(
        input_factory=name_to_input_layer_factory("categorical", num_categories=num_values),
        sum_product="cp",
        sum_weight_factory=parameterization_to_factory(Parameterization(activation="softmax", initialization="normal")),
        num_input_units=units,
        num_sum_units=units,
        num_classes=1,
    )
    return PipelineContext(backend="torch", semiring="lse-sum", fold=True, optimize=True).compile(circuit)


def random_binary_trees(num_variables: int, seed: int = 0) -> object:
    from cirkit.templates.region_graph import RandomBinaryTree

    return RandomBinaryTree(num_variables, depth=DEBD_RECIPE["depth"], num_repetitions=DEBD_RECIPE["num_repetitions"], seed=seed)


def quad_tree(shape: tuple[int, int, int]) -> object:
    """Every region the product of its 2x2 children (4-way splits): our HT's grid structure."""
    from cirkit.templates.region_graph import QuadTree

    return QuadTree(shape, num_patch_splits=4)


def quad_graph(shape: tuple[int, int, int]) -> object:
    from cirkit.templates.region_graph import QuadGraph

    return QuadGraph(shape)


IMAGE_REGION_GRAPHS = {"quad-tree": quad_tree, "quad-graph": quad_graph}


@contextmanager
def lowered_clamp(value: float = -1e30) -> Iterator[None]:
    """Lower libcirkit's log-value clamp (``LOG_CLAMP_MIN``, read at call time from the modules
    that use it) for the duration of a run."""
    from cirkit.backend.torch import semiring, utils

    saved = utils.LOG_CLAMP_MIN, semiring.LOG_CLAMP_MIN
    utils.LOG_CLAMP_MIN = semiring.LOG_CLAMP_MIN = value
    try:
        yield
    finally:
        utils.LOG_CLAMP_MIN, semiring.LOG_CLAMP_MIN = saved


def train(circuit: torch.nn.Module, datamodule, lr: float, batch_size: int, max_epochs: int,
          patience: int | None = None, seed: int = 0) -> dict:
    """Adam on ``-log P(x)`` over the datamodule's training split (its batches reshuffled every
    epoch), keeping the state of the best validation NLL; stops after ``patience`` epochs without
    improvement. Returns the test NLL there, the parameter count, the epochs run and the seconds."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(circuit.parameters(), lr=lr)
    train_x = datamodule.split("train")[0].flatten(1)

    def nll(split: str) -> torch.Tensor:
        x = datamodule.split(split)[0].flatten(1)
        with torch.no_grad():
            return -torch.cat([circuit(b).flatten() for b in x.split(1024)])

    best, best_state, since, epochs, start = math.inf, None, 0, 0, time.perf_counter()
    for epochs in range(1, max_epochs + 1):
        for index in torch.randperm(len(train_x)).split(batch_size):
            loss = -circuit(train_x[index]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val = float(nll("val").mean())
        if val < best or best_state is None:
            best, best_state, since = val, copy.deepcopy(circuit.state_dict()), 0
        else:
            since += 1
            if patience is not None and since >= patience:
                break
    circuit.load_state_dict(best_state)
    test = nll("test")
    return {"params": sum(p.numel() for p in circuit.parameters()), "test_nll": float(test.mean()),
            "best_val_nll": best, "epochs": epochs, "seconds": time.perf_counter() - start,
            # a clamped circuit gives every example the same value: not a likelihood
            "clamped": bool(test.std() < 1e-6)}
