"""Shared fixtures and helpers: tiny discrete models and exhaustive enumeration of their inputs."""
from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def imported_script(name: str) -> Iterator:
    """Yield the module of ``scripts/<name>.py``, imported as ``python scripts/<name>.py`` runs
    it (its sibling modules importable), and undo the import afterwards: the body of a fixture."""
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"convac_{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]
    sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def bench():
    """The module of ``scripts/bench.py`` (:func:`imported_script`)."""
    yield from imported_script("bench")


@pytest.fixture(scope="module")
def results():
    """The module of ``scripts/results.py`` (:func:`imported_script`)."""
    yield from imported_script("results")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def all_inputs(in_shape, num_values: int) -> torch.Tensor:
    """Every input of a discrete model: (num_values ** D, C, H, W) long, D = C * H * W."""
    d = int(torch.tensor(in_shape).prod())
    grid = list(itertools.product(range(num_values), repeat=d))
    return torch.tensor(grid, dtype=torch.long).view(-1, *in_shape)


def shuffle_order(model, seed: int = 0):
    """Give a learned-structure model a random order per repetition (the exact tests must hold
    for any tree, not only the raster order a fresh model starts with); other models unchanged."""
    if getattr(model, "structure", "grid") == "learned":
        generator = torch.Generator().manual_seed(seed)
        r, p = model.order.shape
        model.set_order(torch.stack([torch.randperm(p, generator=generator) for _ in range(r)]))
    return model


@torch.no_grad()
def latent_log_joint(model, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
    """(N, num_classes, Z): ``log P(x, z, y)`` of every input ``x`` (N, C, H, W) (its ``missing``
    variables marginalized), class ``y`` and
    assignment ``z`` of every latent (the repetition ``r`` chosen by the root, and the channel
    ``Z_{l,i}`` of every position of every level of that repetition), by the explicit product of
    the latent tree (DESIGN section 2), in the log domain:

        log P(y) + log w_root[y, (r, Z_L)] + sum_{l, c} log w_{l,c}[Z_{l,parent(c)}, Z_{l-1,c}]
        + sum_i log P(x_i | Z_{0,i}).

    ``Z = R * prod_l K_l ** (P_l / R)``: tiny models only. The leaf term comes from the leaf layer
    (``level_log_probs(x, missing)[0]``); everything else from the weights, never from the sum
    layers. The assignments run over ``r``, then ``itertools.product`` over the latents of level
    0, 1, ..., L of repetition ``r`` (positions row-major).
    """
    repetitions = model.num_repetitions
    rows = [(h // repetitions, w) for h, w in model.grids]  # the grid of one repetition
    sizes = [(k, h * w) for k, (h, w) in zip(model.channels, rows)]
    choices = [range(k) for k, p in sizes for _ in range(p)]
    z = torch.tensor(list(itertools.product(*choices)), dtype=torch.long).view(-1, len(choices))
    n_z = z.shape[0]
    leaf = model.level_log_probs(x, missing)[0].double()  # (N, M, H_0, W_0)
    prior = model.log_class_prior().double().unsqueeze(1)  # (classes, 1)
    blocks = []
    for r in range(repetitions):
        # the latents of repetition r in its rows of every grid (the other rows are never read)
        per_level = [torch.zeros(n_z, h * repetitions, w, dtype=torch.long) for h, w in rows]
        for level, part in enumerate(torch.split(z, [p for _, p in sizes], dim=1)):
            h, w = rows[level]
            per_level[level][:, r * h:(r + 1) * h] = part.view(n_z, h, w)
        log_tree = torch.zeros(n_z, dtype=torch.float64)
        for level in range(1, model.num_levels + 1):
            h, w = rows[level - 1]
            parent = model.pools[level - 1].expand(per_level[level])[:, r * h:(r + 1) * h].reshape(n_z, -1)  # (Z, P)
            child = per_level[level - 1][:, r * h:(r + 1) * h].reshape(n_z, -1)
            layer = model.sums[level - 1]
            log_w = layer.log_weights().double().expand(layer.num_positions, -1, -1)  # (P_all, K_l, K_{l-1})
            positions = torch.arange(r * h * w, (r + 1) * h * w)
            log_tree += log_w[positions, parent, child].sum(1)
        top = r * model.channels[-1] + per_level[-1][:, r, 0]  # the root's input channel
        root = model.root.log_weights().double()[0][:, top]  # (classes, Z)
        h0, w0 = rows[0]
        z0 = per_level[0][:, r * h0:(r + 1) * h0].reshape(n_z, -1)  # (Z, P_0 / R)
        leaf_r = leaf[:, :, r * h0:(r + 1) * h0].flatten(2)  # (N, M, P_0 / R)
        leaf_term = leaf_r[:, z0, torch.arange(z0.shape[1])].sum(-1)  # (N, Z)
        blocks.append((prior + root + log_tree).unsqueeze(0) + leaf_term.unsqueeze(1))
    return torch.cat(blocks, dim=2)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from seed 0 and leaves torch's thread count as it found it (the CLI's
    ``threads`` option sets it for the whole process)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli_error(monkeypatch, capsys):
    """Run a CLI entry point in this process (``"train"`` or ``"eval"``, as its console script
    would, minus the start-up time) on overrides that must fail; returns (exit status, stderr)."""
    from convac.cli.eval import main as eval_main
    from convac.cli.train import main as train_main

    def run(prog: str, run_dir: Path, *overrides: str) -> tuple[int, str]:
        main = {"train": train_main, "eval": eval_main}[prog]
        monkeypatch.setattr(sys, "argv", [f"convac-{prog}", f"hydra.run.dir={run_dir}", *overrides])
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code, capsys.readouterr().err

    return run


def run_zoo(capsys, *argv: str) -> tuple[int, str]:
    """``convac-zoo argv`` in this process -> (exit status, stdout + stderr)."""
    from convac.cli.zoo import main as zoo_main

    try:
        zoo_main(list(argv))
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    out = capsys.readouterr()
    return status, out.out + out.err

