"""Speed benchmarks of convac: the log-space sum layer, training throughput
against libcirkit, the entropy probe's share of an epoch, how the HT cost grows with the input
size, and ``torch.compile`` against eager.

    python scripts/bench.py --quick --out bench.json          # a few minutes; every speed target
    python scripts/bench.py --out bench.json                  # the full run, with the compile section
    python scripts/bench.py --device cuda --train-channels 128 --train-batch 512 --out bench_gpu.json

Every comparison runs in one process with the contenders interleaved (A, B, A, B, ...) after a
warm-up, and reports the minimum over the repeats: on a shared machine the minimum is the
least disturbed measurement. ``--threads`` (default 1) sets ``torch.set_num_threads``. The run
ends with a summary: one line per speed target with the measured value (the sum layer's forward
at least 35% of a plain bmm's throughput at K = 16 and 50% at K >= 64, a training step at least
2x libcirkit's, the entropy probe at most 5% of an epoch).

The JSON has the top-level keys ``machine``, ``kernel_timings`` (section ``kernels``: every
candidate kernel of the sum node timed at each size class), ``sum_layer``, ``blocks`` (a CPU
sum node block by block against one block), ``train``, ``probe``,
``scaling``, ``compile``, ``fold``, ``kernels`` (the choices made) and ``summary`` (a section
not run is null; ``probe`` is null when ``convac.entropy`` cannot be imported, ``train`` rows
have null ``cirkit_img_s`` when libcirkit, the ``bench`` extra, is not installed), plus ``mode``
and ``train_structure`` (what each side of the training comparison builds).

On CPU, glibc returns freed blocks of more than a few tens of MB to the system, so every
training step of a large model page-faults its big tensors back in; on virtual machines where
a page fault is expensive this can dominate a step (both contenders alike). The numbers are
taken with the stock allocator; ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=4294967296:\
glibc.malloc.mmap_threshold=4294967296`` shows the cost without that churn.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import functools
import getpass
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

# Inductor's on-disk cache keys a compiled graph without the vector extensions its kernels were
# built for: a graph cached by a plain run on an AVX-512 host crashes (SIGSEGV, heap corruption)
# in a run under ATEN_CPU_CAPABILITY=avx2, and the other way round. An emulated dispatch gets a
# cache of its own (Inductor reads the variable when it first needs its cache).
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    try:
        _user = getpass.getuser()
    except (KeyError, OSError):  # no name for this user id (some containers)
        _user = str(os.getuid())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{_user}_{os.environ['ATEN_CPU_CAPABILITY']}")

import torch  # noqa: E402

from convac import Categorical, HTConvAC, kernels  # noqa: E402
from cirkit_recipes import compile_circuit, quad_tree  # noqa: E402
from convac import layers  # noqa: E402

SECTIONS = ["kernels", "sum_layer", "blocks", "train", "probe", "scaling", "compile", "fold"]

# ------------------------------------------------------------------------------------------
# Settings of the three modes
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts of one mode (full, ``--quick`` or ``--dry-run``)."""

    sum_channels: tuple[int, ...] = (16, 64, 256)
    sum_batch: int = 256
    sum_grid: tuple[int, int] = (16, 16)
    sum_repeats: int = 10
    sum_compiled: bool = True  # also time torch.compile(log_einsum_exp) (compiles once per K)
    naive_budget: int = 1 << 26  # elements of the naive broadcast tensor timed at once
    train_cases: tuple[tuple[str, tuple[int, int, int], int], ...] = (
        ("28x28 categorical-256", (1, 28, 28), 256),
        ("digits 8x8 categorical-17", (1, 8, 8), 17),
        ("64x64 categorical-256", (1, 64, 64), 256),
    )
    train_channels: int = 32
    train_batch: int = 100
    train_repeats: int = 20
    scaling_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    scaling_repeats: int = 5
    probe_repeats: int = 3
    probe_samples: int | None = None  # None: the probe's default
    probe_train_images: int | None = None  # None: the whole digits train split
    warmup: int = 2
    # (shape, values, batch) of the folded-leaves comparison
    fold_cases: tuple[tuple[tuple[int, int, int], int, int], ...] = (
        ((1, 28, 28), 256, 100), ((1, 8, 8), 17, 100), ((1, 8, 8), 17, 8), ((1, 1, 100), 2, 100),
    )
    kernel_classes: tuple[int, ...] = tuple(kernels.SIZE_CLASSES)  # size classes of the kernels section
    kernel_channels: tuple[int, ...] = (16, 32)  # channel counts of its shift and spread


FULL = Settings()
QUICK = Settings(sum_repeats=3, sum_compiled=False, train_repeats=6, scaling_repeats=2, probe_repeats=1)
DRY_RUN = Settings(
    sum_channels=(4, 8), sum_batch=8, sum_grid=(4, 4), sum_repeats=1, sum_compiled=False, naive_budget=1 << 12,
    train_cases=(("8x8 categorical-256", (1, 8, 8), 256), ("digits 4x4 categorical-17", (1, 4, 4), 17)),
    train_channels=4, train_batch=8, train_repeats=1, scaling_sizes=(4, 8), scaling_repeats=1,
    probe_repeats=1, probe_samples=64, probe_train_images=128, warmup=1,
    fold_cases=(((1, 4, 4), 5, 8), ((1, 1, 8), 2, 4)), kernel_classes=(6, 7), kernel_channels=(16,),
)


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_min(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int,
                    device: torch.device, alternate: bool = False) -> dict[str, float]:
    """Seconds per call of each contender: ``warmup`` untimed rounds, then ``repeats`` rounds
    calling every contender once in turn (interleaved); the minimum over the rounds. With
    ``alternate`` every other round runs them in reverse order, so that none always follows the
    same one (for contenders that differ by little, where the order shows)."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    best = {name: math.inf for name in contenders}
    for round_ in range(repeats):
        order = list(contenders.items())
        for name, fn in (order[::-1] if alternate and round_ % 2 else order):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


# ------------------------------------------------------------------------------------------
# Sum layer: log_einsum_exp against the naive broadcast logsumexp and plain bmm
# ------------------------------------------------------------------------------------------


def naive_log_sum(x: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """``logsumexp_a(log w[p, j, a] + x[p, b, a])`` over the broadcast ``(P, B, K_out, K_in)`` tensor."""
    return torch.logsumexp(log_weights.unsqueeze(1) + x.unsqueeze(2), dim=-1)


def sum_layer_inputs(settings: Settings, k: int, device: torch.device) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
    """The sum layer's timing inputs at ``K = k``, seeded by ``k``: the generator (for more draws),
    log-values ``x`` (P, B, K) of std 3 and per-position logits (P, K, K), ``P`` the positions of
    ``settings.sum_grid`` and ``B = settings.sum_batch``."""
    (gh, gw), batch = settings.sum_grid, settings.sum_batch
    gen = torch.Generator().manual_seed(k)
    x = (torch.randn(gh * gw, batch, k, generator=gen) * 3).to(device)
    return gen, x, torch.randn(gh * gw, k, k, generator=gen).to(device)


def bench_sum_layer(settings: Settings, device: torch.device) -> list[dict]:
    """One row per ``K``: forward time of ours and of the naive form, the matmul GFLOP/s
    (``2 P B K^2`` flops) of ours and of plain ``torch.bmm`` on the same shapes (the practical
    peak), speed-up and efficiency; the same for forward+backward (``*_fb_*`` keys).

    The naive form is timed on the first ``naive_positions`` positions (its broadcast tensor
    is capped at ``naive_budget`` elements, 256 MB at full size) and scaled by
    ``P / naive_positions``: positions are independent and identical work. With
    ``sum_compiled`` (the full run) ``torch.compile(log_einsum_exp)`` is timed beside
    (``compiled_ms``, ``compiled_efficiency``), compiled once per ``K`` before the timing.
    """
    (gh, gw), batch = settings.sum_grid, settings.sum_batch
    positions = gh * gw
    rows = []
    for k in settings.sum_channels:
        gen, x, logits = sum_layer_inputs(settings, k, device)
        weights = torch.softmax(logits, -1)
        log_weights = torch.log_softmax(logits, -1)
        linear = torch.rand(positions, batch, k, generator=gen).to(device)
        w_t = weights.transpose(1, 2).contiguous()  # plain bmm on contiguous operands
        naive_positions = max(1, min(positions, settings.naive_budget // (batch * k * k)))
        x_naive, log_w_naive = x[:naive_positions], log_weights[:naive_positions]

        def ours():
            with torch.no_grad():
                return layers.log_einsum_exp(x, weights)

        def naive():
            with torch.no_grad():
                return naive_log_sum(x_naive, log_w_naive)

        def peak():
            return torch.bmm(linear, w_t)

        contenders = {"ours": ours, "naive": naive, "bmm": peak}
        if settings.sum_compiled:
            compiled_sum = torch.compile(layers.log_einsum_exp, dynamic=False)

            def compiled():
                with torch.no_grad():
                    return compiled_sum(x, weights)

            contenders["compiled"] = compiled
        fwd = interleaved_min(contenders, settings.sum_repeats, settings.warmup, device)

        x_grad = x.clone().requires_grad_()
        logits_grad = logits.clone().requires_grad_()
        x_naive_grad = x[:naive_positions].clone().requires_grad_()
        logits_naive_grad = logits[:naive_positions].clone().requires_grad_()
        grad_out = torch.randn(positions, batch, k, generator=gen).to(device)

        def ours_fb():
            x_grad.grad = logits_grad.grad = None
            layers.log_einsum_exp(x_grad, torch.softmax(logits_grad, -1)).backward(grad_out)

        def naive_fb():
            x_naive_grad.grad = logits_naive_grad.grad = None
            out = naive_log_sum(x_naive_grad, torch.log_softmax(logits_naive_grad, -1))
            out.backward(grad_out[:naive_positions])

        fb = interleaved_min({"ours": ours_fb, "naive": naive_fb},
                             settings.sum_repeats, settings.warmup, device)

        scale = positions / naive_positions
        flops = 2 * positions * batch * k * k
        gflops, peak_gflops = flops / fwd["ours"] / 1e9, flops / fwd["bmm"] / 1e9
        row = {
            "K": k,
            "ours_ms": 1e3 * fwd["ours"],
            "naive_ms": 1e3 * fwd["naive"] * scale,
            "speedup": fwd["naive"] * scale / fwd["ours"],
            "gflops": gflops,
            "peak_gflops": peak_gflops,
            "efficiency": gflops / peak_gflops,
            "compiled_ms": 1e3 * fwd["compiled"] if "compiled" in fwd else None,
            "compiled_efficiency": fwd["bmm"] / fwd["compiled"] if "compiled" in fwd else None,
            "ours_fb_ms": 1e3 * fb["ours"],
            "naive_fb_ms": 1e3 * fb["naive"] * scale,
            "speedup_fb": fb["naive"] * scale / fb["ours"],
            "P": positions,
            "B": batch,
            "naive_positions": naive_positions,
        }
        rows.append(row)
        compiled_text = "" if row["compiled_ms"] is None else f"  compiled ({100 * row['compiled_efficiency']:4.1f}%)"
        print(f"  sum K={k:4d}: ours {row['ours_ms']:9.2f} ms  naive {row['naive_ms']:10.2f} ms"
              f"  x{row['speedup']:7.1f}  {gflops:6.1f} / {peak_gflops:6.1f} GFLOP/s"
              f" ({100 * row['efficiency']:4.1f}%)  fwd+bwd x{row['speedup_fb']:6.1f}{compiled_text}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------
# Training throughput: our HT against libcirkit on the same quad-tree structure
# ------------------------------------------------------------------------------------------


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _train_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """A closure running forward + backward + ``torch.optim.Adam`` step (lr 0.01, ``fused=True``
    as ``convac-train`` uses it) on a fixed batch; the same optimizer for every contender."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)

    def step():
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()

    return step


def _train_batch(shape: tuple[int, int, int], num_values: int, batch: int, device: torch.device) -> tuple[torch.Tensor, str]:
    """A fixed batch ``(B, C, H, W)``: the first bundled 8x8 digits for ``(1, 8, 8)`` with 17
    values, else seeded uniform random values."""
    if shape == (1, 8, 8) and num_values == 17:
        from sklearn.datasets import load_digits

        images = torch.from_numpy(load_digits().images[:batch]).long().unsqueeze(1)
        return images.to(device), "the first sklearn digits"
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, num_values, (batch, *shape), generator=gen).to(device), "uniform random values"


def ht_model(shape: tuple[int, int, int], num_values: int, channels: int, device: torch.device) -> HTConvAC:
    """Our HT: ``num_components = channels``, 2x2 pooling down to 1x1, per-position parameters;
    without per-batch value checks (``validate_args = False``), as ``convac-train`` runs it once its
    datamodule has checked the data."""
    model = HTConvAC(shape, Categorical(num_values), channels, channels, pool=2).to(device)
    model.validate_args = False
    return model


def cirkit_circuit(shape: tuple[int, int, int], num_values: int, channels: int, device: torch.device):
    """libcirkit 0.3.1's closest equivalent of our HT: a quad-tree region graph with 4-way
    splits (``QuadTree(num_patch_splits=4)``: every region is the product of its 2x2 children),
    CP sum-product layers (a dense ``K x K`` sum per child region, then a Hadamard product:
    our per-position sum then product pooling), categorical input layers with ``channels``
    units, softmax sum weights, one output (:func:`cirkit_recipes.compile_circuit`)."""
    return compile_circuit(quad_tree(shape), num_values, channels).to(device)


def cirkit_available() -> str | None:
    """libcirkit's version, or None (with a printed message) when it cannot be imported."""
    try:
        import cirkit.pipeline  # noqa: F401
        from importlib.metadata import version

        return version("libcirkit")
    except Exception as err:  # ImportError, or a broken install
        print(f"  libcirkit is not importable ({err.__class__.__name__}: {err}); skipping its rows"
              " (pip install 'convac[bench]' installs it)", flush=True)
        return None


def bench_train(settings: Settings, device: torch.device) -> tuple[list[dict], dict]:
    """Images/s of forward + backward + Adam step, ours and libcirkit's, interleaved; rows
    ``{"dataset", "ours_img_s", "cirkit_img_s", "ratio"}`` plus parameter counts and a
    description of both structures."""
    cirkit_version = cirkit_available()
    rows, k, batch = [], settings.train_channels, settings.train_batch
    for name, shape, num_values in settings.train_cases:
        x, source = _train_batch(shape, num_values, batch, device)
        ours = ht_model(shape, num_values, k, device)
        contenders = {"ours": _train_step(ours, lambda: -ours.log_prob(x).mean())}
        if cirkit_version is not None:
            circuit = cirkit_circuit(shape, num_values, k, device)
            flat = x.reshape(batch, -1)
            contenders["cirkit"] = _train_step(circuit, lambda: -circuit(flat).mean())
        best = interleaved_min(contenders, settings.train_repeats, settings.warmup, device)
        row = {
            "dataset": name,
            "ours_img_s": batch / best["ours"],
            "cirkit_img_s": batch / best["cirkit"] if "cirkit" in best else None,
            "ratio": best["cirkit"] / best["ours"] if "cirkit" in best else None,
            "ours_step_ms": 1e3 * best["ours"],
            "cirkit_step_ms": 1e3 * best["cirkit"] if "cirkit" in best else None,
            "ours_params": _num_params(ours),
            "cirkit_params": _num_params(circuit) if "cirkit" in best else None,
            "batch": batch,
            "data": source,
        }
        rows.append(row)
        cirkit_text = (f"cirkit {row['cirkit_img_s']:8.0f} img/s ({row['cirkit_params']:,} params)  ratio {row['ratio']:.2f}"
                       if row["ratio"] is not None else "cirkit skipped")
        print(f"  train {name}: ours {row['ours_img_s']:8.0f} img/s ({row['ours_params']:,} params)  {cirkit_text}",
              flush=True)
    structure = {
        "ours": f"convac HTConvAC: per-position Categorical leaves with M={k} components, fusion layers of "
                f"per-position {k}x{k} log-space sums then 2x2 product pooling down to 1x1 (odd grids padded "
                f"with log-value 0), a {k}->1 root sum",
        "cirkit": None if cirkit_version is None else
        f"libcirkit {cirkit_version}: QuadTree(num_patch_splits=4) region graph, 'cp' sum-product layers "
                  f"(a {k}x{k} dense sum per child region, Hadamard product of the 2x2 children; odd grids "
                  f"merge 2 or 1 children), categorical input layers with {k} units, softmax sum weights, "
                  "a final sum to 1 output; lse-sum semiring, fold=True, optimize=True",
        "optimizer": "torch.optim.Adam(lr=0.01, fused=True) for both",
    }
    return rows, structure


# ------------------------------------------------------------------------------------------
# Entropy probe: its share of an epoch of the default digits run
# ------------------------------------------------------------------------------------------


def bench_probe(settings: Settings, device: torch.device) -> dict | None:
    """Share of an epoch of the default run (``model=ht data=digits``: HT with M=16, K=32,
    batch 64, fused Adam lr 0.01, no per-batch value checks) taken by ``convac.entropy.probe`` at its default settings:
    ``share = probe_s / (epoch_s + probe_s)``, ``epoch_s`` one pass over the training split
    plus one over the validation split in a plain loop (no Lightning overhead, so the share is
    an upper bound), and the relative standard error ``se_rel = SE(H(X)) / H(X)`` it reaches.
    None (with a printed message) when the probe cannot be imported."""
    try:
        from convac.entropy import probe
    except Exception as err:
        print(f"  convac.entropy.probe is not importable ({err.__class__.__name__}: {err}); probe: null", flush=True)
        return None
    from convac.data.digits import DigitsDataModule

    data = DigitsDataModule(batch_size=64)
    (train_x, _), (val_x, _) = data.split("train"), data.split("val")
    if settings.probe_train_images is not None:
        train_x = train_x[: settings.probe_train_images]
    train_batches = [b.to(device) for b in train_x.split(64)]
    val_batches = [b.to(device) for b in val_x.split(64)]
    torch.manual_seed(0)
    model = HTConvAC((1, 8, 8), Categorical(17), num_components=16, channels=32).to(device)
    model.validate_args = False  # as convac-train, whose datamodule checked the data
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)

    def epoch():
        model.train()
        for x in train_batches:
            optimizer.zero_grad()
            (-model.log_prob(x).mean()).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for x in val_batches:
                model.log_prob(x)

    kwargs = {} if settings.probe_samples is None else {"num_samples": settings.probe_samples}
    reports = []

    def run_probe():
        reports.append(probe(model, seed=0, **kwargs))

    best = interleaved_min({"epoch": epoch, "probe": run_probe}, settings.probe_repeats, 1, device)
    metrics = reports[-1].metrics()
    result = {
        "share": best["probe"] / (best["epoch"] + best["probe"]),
        "se_rel": metrics["entropy/H_X_se"] / metrics["entropy/H_X"],
        "probe_s": best["probe"],
        "epoch_s": best["epoch"],
        "num_samples": kwargs.get("num_samples", "default"),
        "train_images": int(train_x.shape[0]),
    }
    print(f"  probe: {result['probe_s']:.3f} s vs epoch {result['epoch_s']:.3f} s -> share {result['share']:.3f},"
          f" SE(H(X))/H(X) = {result['se_rel']:.2e}", flush=True)
    return result


# ------------------------------------------------------------------------------------------
# Scaling: HT throughput and peak memory against the input size
# ------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``: resident now, ``VmHWM``: peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _reset_peak_rss() -> int | None:
    """Return freed heap memory to the system (glibc ``malloc_trim``), reset the kernel's
    peak-resident mark (``/proc/self/clear_refs``, Linux) and return the resident kB now;
    None where either is unavailable."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS")
    except (OSError, AttributeError, StopIteration):
        return None


def scaling_point(size: int, settings: Settings, device: torch.device) -> dict:
    """Train-step images/s and peak memory of a ``size x size`` categorical-256 HT (K=32, batch
    ``train_batch``). Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak
    resident set size while building and training the model minus the resident size before
    (heap trimmed first), so parameters, optimizer state, gradients and activations; null
    where ``/proc`` cannot measure it. ``state_mb``: parameters, gradients and the two Adam
    moments (16 bytes per float32 parameter); ``per_example_mb``: the rest of the peak over the
    batch size, the activations and temporaries of one example. :func:`bench_scaling` runs each
    size on the CPU in a fresh process."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline_kb = _reset_peak_rss() if device.type == "cpu" else None
    shape = (1, size, size)
    x, _ = _train_batch(shape, 256, settings.train_batch, device)
    model = ht_model(shape, 256, settings.train_channels, device)
    step = _train_step(model, lambda: -model.log_prob(x).mean())
    best = interleaved_min({"ht": step}, settings.scaling_repeats, settings.warmup, device)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = None if baseline_kb is None else (_status_kb("VmHWM") - baseline_kb) / 1024
    state_mb = 16 * _num_params(model) / 2**20
    per_example_mb = None if peak_mb is None else (peak_mb - state_mb) / settings.train_batch
    return {"size": f"{size}x{size}", "img_s": settings.train_batch / best["ht"], "peak_mb": peak_mb,
            "state_mb": state_mb, "per_example_mb": per_example_mb, "batch": settings.train_batch,
            "step_ms": 1e3 * best["ht"], "num_variables": size * size, "params": _num_params(model)}


def bench_scaling(settings: Settings, device: torch.device, mode: str, threads: int, overrides: dict) -> list[dict]:
    """:func:`scaling_point` at each input size, in increasing order: on the CPU each in a fresh
    process (a process's peak resident set cannot be reset below what it already holds), on a
    GPU in this one (the allocator's peak is reset per size, and a process would spend seconds
    starting CUDA)."""
    rows = []
    for size in settings.scaling_sizes:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous size's cached blocks
            row = scaling_point(size, settings, device)
        else:
            command = [sys.executable, __file__, f"--{mode}", "--device", str(device), "--threads", str(threads),
                       "--scaling-point", str(size)]
            command += [f"--{k.replace('_', '-')}={v}" for k, v in overrides.items() if v is not None]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        peak = "n/a" if row["peak_mb"] is None else f"{row['peak_mb']:.1f} MB ({row['per_example_mb']:.2f} MB per example)"
        print(f"  scaling {row['size']:>7}: {row['img_s']:9.1f} img/s  peak {peak}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------
# torch.compile: the training step of a compiled model against the eager one
# ------------------------------------------------------------------------------------------


def bench_compile(settings: Settings, device: torch.device) -> list[dict]:
    """``module.compile: true`` measured: one training step (as :func:`bench_train`) of the
    eager model and of the same model after ``model.compile()`` (``torch.compile`` of its
    forward), interleaved after the compilation; rows ``{"dataset", "eager_ms", "compiled_ms",
    "speedup", "compile_s"}`` for the first two training cases."""
    rows = []
    for name, shape, num_values in settings.train_cases[:2]:
        x, _ = _train_batch(shape, num_values, settings.train_batch, device)
        eager = ht_model(shape, num_values, settings.train_channels, device)
        compiled = ht_model(shape, num_values, settings.train_channels, device)
        compiled.load_state_dict(eager.state_dict())
        compiled.compile()
        steps = {"eager": _train_step(eager, lambda: -eager.log_prob(x).mean()),
                 "compiled": _train_step(compiled, lambda: -compiled.log_prob(x).mean())}
        start = time.perf_counter()
        steps["compiled"]()  # compiles the forward and the backward
        compile_s = time.perf_counter() - start
        best = interleaved_min(steps, settings.train_repeats, settings.warmup, device)
        row = {"dataset": name, "eager_ms": 1e3 * best["eager"], "compiled_ms": 1e3 * best["compiled"],
               "speedup": best["eager"] / best["compiled"], "compile_s": compile_s, "batch": settings.train_batch}
        rows.append(row)
        print(f"  compile {name}: eager {row['eager_ms']:8.2f} ms  compiled {row['compiled_ms']:8.2f} ms"
              f"  x{row['speedup']:.2f} (compiling took {compile_s:.0f} s)", flush=True)
    return rows


# ------------------------------------------------------------------------------------------
# Sum-node kernels: every candidate at every size class
# ------------------------------------------------------------------------------------------
def bench_kernels(settings: Settings, device: torch.device) -> list[dict]:
    """Every candidate of every sum-node operation timed at each size class in
    ``settings.kernel_classes`` (the shift and the spread at each of ``settings.kernel_channels``), by
    ``convac.kernels``' own measurement, the one a run makes on first use (the choices made
    before are forgotten); rows ``{"operation", "K", "size_class", "values", "ms", "chosen"}``,
    ``ms`` in milliseconds per candidate."""
    kernels.forget()
    for size in settings.kernel_classes:
        values = 4 ** size
        for k in settings.kernel_channels:
            kernels.channel_max(torch.zeros(values // k, k, device=device))
            kernels.spread(torch.zeros(values // k, k, device=device))
        kernels.exp_(torch.zeros(values, device=device))
        mixed = torch.ones(values // 16, 16, device=device)
        kernels.log_add(mixed, torch.zeros(values // 16, 1, device=device), mixed)
    chosen, rows = kernels.chosen(), []
    for operation, timings in kernels.measured().items():
        for key, seconds in timings.items():
            _, _, channels, size = key
            row = {"operation": operation, "K": channels, "size_class": size, "values": 4 ** size,
                   "ms": {name: 1e3 * s for name, s in seconds.items()}, "chosen": chosen[operation][key]}
            rows.append(row)
            times = ", ".join(f"{name} {ms:.3f} ms" for name, ms in row["ms"].items())
            print(f"  kernel {operation} on {kernels.describe(key)}: {times} -> {row['chosen']}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------
# Blocks: the CPU sum node block by block against one block
# ------------------------------------------------------------------------------------------
def bench_blocks(settings: Settings, device: torch.device) -> list[dict] | None:
    """The sum nodes' CPU blocks (``convac.layers.CPU_BLOCK_VALUES``) against blocks of half and
    of twice that size and against the whole tensor as one block, interleaved in alternating
    order: the sum layer's forward at each ``settings.sum_channels`` (the ``sum_layer`` section's
    sizes), then a training step (:func:`_train_step`) and a likelihood without gradients of
    each training model. Rows ``{"case", "blocks_ms", "half_ms", "double_ms", "one_block_ms"}``:
    the measurement behind ``CPU_BLOCK_VALUES``. None on other devices, where the whole tensor is
    always one block."""
    if device.type != "cpu":
        print(f"  blocks: skipped on {device.type} (the sum node's blocks are a CPU matter)", flush=True)
        return None
    default = layers.CPU_BLOCK_VALUES
    cases: list[tuple[str, Callable[[], None]]] = []
    for k in settings.sum_channels:
        _, x, logits = sum_layer_inputs(settings, k, device)
        cases.append((f"sum layer K={k}", torch.no_grad()(functools.partial(layers.log_einsum_exp, x, logits.softmax(-1)))))
    for name, shape, num_values in settings.train_cases:
        model = ht_model(shape, num_values, settings.train_channels, device)
        x, _ = _train_batch(shape, num_values, settings.train_batch, device)
        cases.append((f"{name} training step", _train_step(model, lambda model=model, x=x: -model.log_prob(x).mean())))
        cases.append((f"{name} likelihood", torch.no_grad()(functools.partial(model.log_prob, x))))

    def with_budget(budget: int, fn: Callable[[], None]) -> Callable[[], None]:
        def call() -> None:
            layers.CPU_BLOCK_VALUES = budget
            fn()
        return call

    rows = []
    try:
        for case, fn in cases:
            budgets = {"blocks": default, "half": default // 2, "double": default * 2, "one_block": 1 << 62}
            best = interleaved_min({name: with_budget(budget, fn) for name, budget in budgets.items()},
                                   settings.train_repeats, settings.warmup, device, alternate=True)
            row = {"case": case, **{f"{name}_ms": 1e3 * seconds for name, seconds in best.items()}}
            rows.append(row)
            print(f"  blocks {case}: one block {row['one_block_ms']:.2f} ms, blocks {row['blocks_ms']:.2f} ms "
                  f"(x{row['one_block_ms'] / row['blocks_ms']:.2f}); half-size blocks {row['half_ms']:.2f} ms, "
                  f"double-size {row['double_ms']:.2f} ms", flush=True)
    finally:
        layers.CPU_BLOCK_VALUES = default
    return rows


# ------------------------------------------------------------------------------------------
# Folded leaves: the value table against the layer-by-layer pass
# ------------------------------------------------------------------------------------------
def bench_fold(settings: Settings, device: torch.device) -> list[dict]:
    """Forward + backward of a likelihood (no optimizer step) of the same HT with the leaves
    folded into the first sum layer and layer by layer (``ConvAC.fold_leaf_sums`` forced),
    interleaved; rows ``{"case", "folded_ms", "layered_ms", "folded_by_default"}``: the measurement
    behind ``FOLD_MAX_VALUES``."""
    rows = []
    for shape, num_values, batch in settings.fold_cases:
        x, _ = _train_batch(shape, num_values, batch, device)
        model = ht_model(shape, num_values, settings.train_channels, device)
        by_default = model.fold_leaf_sums

        def step(fold: bool) -> Callable[[], None]:
            def run() -> None:
                model.fold_leaf_sums = fold
                model.zero_grad()
                (-model.log_prob(x).sum()).backward()
            return run

        best = interleaved_min({"folded": step(True), "layered": step(False)}, settings.train_repeats, settings.warmup, device)
        case = f"{'x'.join(map(str, shape[1:]))} categorical-{num_values}, batch {batch}"
        row = {"case": case, "folded_ms": 1e3 * best["folded"], "layered_ms": 1e3 * best["layered"],
               "folded_by_default": by_default}
        rows.append(row)
        print(f"  fold {case}: folded {row['folded_ms']:8.2f} ms  layer by layer {row['layered_ms']:8.2f} ms"
              f"  (the model folds: {by_default})", flush=True)
    return rows


def summary(results: dict) -> list[str]:
    """One line per speed target, with the measured values (sections not run are left out)."""
    lines = []
    if results["probe"] is not None:
        p = results["probe"]
        lines.append(f"probe beside a bare training loop (no Lightning, an upper bound): share {100 * p['share']:.1f}%, "
                     f"SE(H(X))/H(X) {100 * p['se_rel']:.2f}% (<= 0.5%); the target (<= 5%) is convac-train's "
                     f"share: python scripts/results.py default-run")
    if results["train"] is not None and any(r["ratio"] is not None for r in results["train"]):
        ratios = ", ".join(f"{r['dataset']} {r['ratio']:.2f}x" for r in results["train"] if r["ratio"] is not None)
        lines.append(f"training step vs libcirkit: {ratios} (target >= 2x each)")
    if results["sum_layer"] is not None:
        effs = ", ".join(f"K={r['K']} {100 * r['efficiency']:.0f}%" for r in results["sum_layer"])
        lines.append(f"sum layer forward / plain bmm: {effs} (target >= 35% at K=16, >= 50% at K>=64)")
        if results["sum_layer"][0].get("compiled_efficiency") is not None:
            effs = ", ".join(f"K={r['K']} {100 * r['compiled_efficiency']:.0f}%" for r in results["sum_layer"])
            lines.append(f"sum layer forward under torch.compile / plain bmm: {effs}")
    if results["compile"] is not None:
        speedups = ", ".join(f"{r['dataset']} x{r['speedup']:.2f}" for r in results["compile"])
        lines.append(f"torch.compile training step over eager: {speedups} (module.compile: keep whichever wins)")
    if results["scaling"] is not None and results["scaling"][-1]["per_example_mb"] is not None:
        last = results["scaling"][-1]
        lines.append(f"scaling up to {last['size']}: {last['img_s']:.1f} img/s, peak {last['peak_mb']:.0f} MB, "
                     f"{last['per_example_mb']:.2f} MB per example")
    return lines


# ------------------------------------------------------------------------------------------
# Machine and command line
# ------------------------------------------------------------------------------------------


def vector_extensions() -> dict[str, str]:
    """The CPU's vector extensions as the libraries use them: the flags of ``/proc/cpuinfo``
    (``avx2``, ``avx512f``, ...), the kernels PyTorch dispatches (``torch.backends.cpu``, which
    ``ATEN_CPU_CAPABILITY=avx2`` lowers) and the SIMD targets NumPy dispatches (which
    ``NPY_DISABLE_CPU_FEATURES`` lowers): an AVX2 host is emulated on an AVX-512 one only when
    both libraries say so."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, StopIteration):
        pass
    cpu = " ".join(sorted(f for f in flags if f in ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_tile"))) or "unknown"
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        numpy_targets = " ".join(t for t in __cpu_dispatch__ if __cpu_features__.get(t))
    except ImportError:  # NumPy < 2
        numpy_targets = "unknown"
    return {"cpu_flags": cpu, "torch_capability": torch.backends.cpu.get_cpu_capability(), "numpy_dispatch": numpy_targets}


def machine_info(device: torch.device, threads: int) -> dict:
    """CPU model, vector extensions (:func:`vector_extensions`), thread count, versions and the
    device the benchmark ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **vector_extensions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repeats: about a minute")
    mode.add_argument("--dry-run", action="store_true", help="tiny sizes, one repeat: a smoke test of the script")
    mode.add_argument("--full", action="store_true", help="the full run (the default)")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--only", nargs="+", choices=SECTIONS,
                        help="run only these sections (the others are null)")
    parser.add_argument("--train-channels", type=int, help="K of the training and scaling models (default 32)")
    parser.add_argument("--train-batch", type=int, help="batch of the training and scaling steps (default 100)")
    parser.add_argument("--scaling-point", type=int, help=argparse.SUPPRESS)  # internal: one scaling size
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    mode = "quick" if args.quick else "dry-run" if args.dry_run else "full"
    settings = {"full": FULL, "quick": QUICK, "dry-run": DRY_RUN}[mode]
    overrides = {"train_channels": args.train_channels, "train_batch": args.train_batch}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    torch.set_num_threads(args.threads)
    if args.scaling_point is not None:
        print(json.dumps(scaling_point(args.scaling_point, settings, device)))
        return {}

    sections = args.only or [s for s in SECTIONS if s != "compile" or mode == "full"]
    results: dict = {"machine": machine_info(device, args.threads), "mode": mode, "kernel_timings": None,
                     "sum_layer": None, "blocks": None, "train": None,
                     "train_structure": None, "probe": None, "scaling": None, "compile": None, "fold": None}
    machine = results["machine"]
    print(f"convac bench ({mode}) on {machine['cpu']}, {args.threads} thread(s), device {device}\n"
          f"  vector extensions: CPU {machine['cpu_flags']}; torch dispatches {machine['torch_capability']}; "
          f"NumPy dispatches {machine['numpy_dispatch'] or 'baseline only'}", flush=True)
    if "kernels" in sections:
        results["kernel_timings"] = bench_kernels(settings, device)
    if "sum_layer" in sections:
        results["sum_layer"] = bench_sum_layer(settings, device)
    if "blocks" in sections:
        results["blocks"] = bench_blocks(settings, device)
    if "train" in sections:
        results["train"], results["train_structure"] = bench_train(settings, device)
    if "probe" in sections:
        results["probe"] = bench_probe(settings, device)
    if "scaling" in sections:
        results["scaling"] = bench_scaling(settings, device, mode, args.threads, overrides)
    if "compile" in sections:
        results["compile"] = bench_compile(settings, device)
    if "fold" in sections:
        results["fold"] = bench_fold(settings, device)
    results["kernels"] = {op: {kernels.describe(key): name for key, name in choices.items()}
                          for op, choices in kernels.chosen().items()}
    results["summary"] = summary(results) + [
        "sum-node kernels chosen here: " + "; ".join(f"{op} {choices}" for op, choices in results["kernels"].items())]
    print("\n".join(["summary (the speed targets):"] + [f"  {line}" for line in results["summary"]]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
