"""Classification with missing data: the protocol of Sharir, Tamari, Cohen and Shashua,
"Tensorial Mixture Models" (arXiv:1610.04167, section 5: MNIST with i.i.d. missing pixels and
with missing rectangles).

A classifier trained on complete images is given test images whose pixels are missing

* i.i.d. with probability ``rate`` (:func:`iid_mask`), or
* inside ``count`` squares of side ``side`` placed at random (:func:`rectangles_mask`),

and is scored by its accuracy. A ConvAC marginalizes the missing pixels exactly
(``argmax_y log P(y | x_obs)``, :meth:`convac.model.ConvAC.log_posterior`); the baselines are
scikit-learn classifiers trained on the complete training images (an RBF SVM, logistic
regression, an MLP) and given the test images with the missing pixels imputed by the training
mean, by zero, or by the mean of the 5 nearest training images over the observed pixels
(``sklearn.impute.KNNImputer``). :func:`run_protocol` runs it all; :data:`PROTOCOLS` holds
the missingness patterns per dataset; :func:`plot_missing` draws the accuracies.

An experiment driver of ``python scripts/results.py missing``, not part of the library: a ConvAC
needs nothing of it to marginalize missing values (``model.log_posterior(x, missing)``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from convac.errors import InvalidValueError
from convac.model import ConvAC
from convac.plotting import plt, save


@dataclass(frozen=True)
class Protocol:
    """The missingness patterns: i.i.d. ``rates`` and every ``(count, side)`` of rectangles."""

    rates: tuple[float, ...]
    counts: tuple[int, ...]
    sides: tuple[int, ...]

    def patterns(self) -> Iterator[tuple[str, dict]]:
        """``(name, settings)`` of every pattern: ``("iid 0.25", {"rate": 0.25})``, then
        ``("2 x 11x11", {"count": 2, "side": 11})``."""
        for rate in self.rates:
            yield f"iid {rate:g}", {"rate": rate}
        for side in self.sides:
            for count in self.counts:
                yield f"{count} x {side}x{side}", {"count": count, "side": side}


RATES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
PROTOCOLS = {
    "mnist": Protocol(RATES, counts=(1, 2, 3), sides=(7, 11, 15)),  # 28x28, as in TMM
    "digits": Protocol(RATES, counts=(1, 2, 3), sides=(2, 3, 4)),  # 8x8: the MNIST sides scaled by 8/28
}


# ------------------------------------------------------------------------------------ masks
def iid_mask(shape: tuple[int, ...], rate: float, generator: torch.Generator) -> Tensor:
    """A bool mask of ``shape`` (``(N, C, H, W)``, True = missing): every variable missing
    independently with probability ``rate`` in ``[0, 1]``."""
    if not 0.0 <= rate <= 1.0:
        raise InvalidValueError(f"rate must be in [0, 1], got {rate}")
    return torch.rand(shape, generator=generator) < rate


def rectangles_mask(shape: tuple[int, ...], count: int, side: int, generator: torch.Generator) -> Tensor:
    """A bool mask of ``shape`` ``(N, C, H, W)`` (True = missing): per image the union of
    ``count`` squares of ``side x side`` pixels (every channel), each placed independently with
    its top-left corner uniform over the ``(H - side + 1) x (W - side + 1)`` positions where it
    fits (they may overlap)."""
    n, c, h, w = shape
    if not 1 <= side <= min(h, w):
        raise InvalidValueError(f"side must be in [1, {min(h, w)}] for {h}x{w} images, got {side}")
    tops = torch.randint(0, h - side + 1, (n, count, 1, 1), generator=generator)
    lefts = torch.randint(0, w - side + 1, (n, count, 1, 1), generator=generator)
    rows, cols = torch.arange(h).view(1, 1, h, 1), torch.arange(w).view(1, 1, 1, w)
    inside = (rows >= tops) & (rows < tops + side) & (cols >= lefts) & (cols < lefts + side)  # (N, count, H, W)
    return inside.any(1, keepdim=True).expand(n, c, h, w)


def protocol_masks(shape: tuple[int, ...], protocol: Protocol, seed: int = 0) -> dict[str, Tensor]:
    """Every pattern of ``protocol`` as a mask of ``shape``, from one generator seeded ``seed``
    (the same masks for every method)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: iid_mask(shape, generator=generator, **kw) if "rate" in kw else rectangles_mask(shape, generator=generator, **kw)
            for name, kw in protocol.patterns()}


# -------------------------------------------------------------------------------- baselines
def classifiers(seed: int = 0) -> dict[str, object]:
    """The scikit-learn baselines (unfitted): an RBF SVM, logistic regression, an MLP."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    return {
        "svm_rbf": SVC(C=10, gamma="scale"),
        "logreg": LogisticRegression(max_iter=2000),
        "mlp": MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=300, early_stopping=True, random_state=seed),
    }


def imputers(train: np.ndarray, knn_rows: int, seed: int = 0) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Imputations of the NaN entries of flat images ``(N, D)``, fitted on the complete training
    images ``train`` ``(N_train, D)``: the training mean of each pixel, zero, and the mean of the 5
    nearest of ``knn_rows`` training images (a seeded subset when there are more; all when
    ``knn_rows`` is 0 or at least ``N_train``) by the distance over the observed pixels."""
    from sklearn.impute import KNNImputer

    mean = train.mean(0)
    reference = train
    if 0 < knn_rows < len(train):
        reference = train[np.random.default_rng(seed).choice(len(train), knn_rows, replace=False)]
    knn = KNNImputer(n_neighbors=5).fit(reference)
    return {
        "mean": lambda x: np.where(np.isnan(x), mean, x),
        "zero": lambda x: np.nan_to_num(x, nan=0.0),
        "knn": knn.transform,
    }


# --------------------------------------------------------------------------------- protocol
@torch.no_grad()
def convac_accuracy(model: ConvAC, x: Tensor, y: Tensor, missing: Tensor, batch_size: int = 500) -> float:
    """Accuracy of ``argmax_y log P(y | x_obs)`` on ``x`` (N, C, H, W) with the ``missing``
    variables marginalized exactly."""
    correct = 0
    for xb, yb, mb in zip(x.split(batch_size), y.split(batch_size), missing.split(batch_size)):
        correct += int((model.log_posterior(xb, mb).argmax(1) == yb).sum())
    return correct / len(y)


def run_protocol(model: ConvAC, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], protocol: Protocol,
                 num_values: int, seed: int = 0, knn_rows: int = 0, log: Callable[[str], None] = lambda _: None) -> dict:
    """Accuracy of ``model`` (a ConvAC classifier) and of every baseline x imputation for every
    pattern of ``protocol`` on ``test = (x, y)``; the baselines are fitted on ``train = (x, y)``
    (integer images with values ``0 .. num_values - 1``, fed to them scaled to [0, 1]).

    Returns ``{"rows": [...], "seconds": {...}}``: one row per pattern with ``pattern``, ``kind``
    (``iid`` / ``rectangles``), ``missing_share`` (the share of the test variables missing) and
    one accuracy per method (``convac``, ``<classifier>_<imputation>``); the seconds spent fitting
    the baselines, imputing (per imputation) and classifying."""
    (train_x, train_y), (test_x, test_y) = train, test
    scale = 1.0 / (num_values - 1)
    flat_train = train_x.flatten(1).double().numpy() * scale
    seconds = {"fit_baselines": 0.0, "convac": 0.0}
    start = time.perf_counter()
    fitted = {name: clf.fit(flat_train, train_y.numpy()) for name, clf in classifiers(seed).items()}
    fill = imputers(flat_train, knn_rows, seed)
    seconds["fit_baselines"] = time.perf_counter() - start
    log(f"baselines fitted in {seconds['fit_baselines']:.0f} s")
    flat_test, labels = test_x.flatten(1).double().numpy() * scale, test_y.numpy()
    rows = []
    for pattern, mask in protocol_masks(tuple(test_x.shape), protocol, seed).items():
        start = time.perf_counter()
        row = {"pattern": pattern, "kind": "iid" if pattern.startswith("iid") else "rectangles",
               "missing_share": float(mask.double().mean()), "convac": convac_accuracy(model, test_x, test_y, mask)}
        seconds["convac"] += time.perf_counter() - start
        observed = np.where(mask.flatten(1).numpy(), np.nan, flat_test)
        for imputation, impute in fill.items():
            start = time.perf_counter()
            imputed = impute(observed)
            seconds[f"impute_{imputation}"] = seconds.get(f"impute_{imputation}", 0.0) + time.perf_counter() - start
            for name, clf in fitted.items():
                start = time.perf_counter()
                row[f"{name}_{imputation}"] = float((clf.predict(imputed) == labels).mean())
                seconds[f"predict_{name}"] = seconds.get(f"predict_{name}", 0.0) + time.perf_counter() - start
        rows.append(row)
        log(f"{pattern}: missing {row['missing_share']:.3f}, convac {row['convac']:.3f}")
    return {"rows": rows, "seconds": seconds}


def markdown_table(rows: list[dict]) -> str:
    """The rows of :func:`run_protocol` as a markdown table (accuracies to 3 decimals)."""
    methods = [k for k in rows[0] if k not in ("pattern", "kind", "missing_share")]
    lines = ["| missing | share | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for row in rows:
        best = max(row[m] for m in methods)
        cells = [f"**{row[m]:.3f}**" if row[m] == best else f"{row[m]:.3f}" for m in methods]
        lines.append(f"| {row['pattern']} | {row['missing_share']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ accuracy under missing data
def plot_missing(rows: list[dict], title: str, png_path: str | Path) -> Path:
    """:func:`missing_figure`, written to ``png_path``."""
    return save(missing_figure(rows, title), png_path)


def missing_figure(rows: list[dict], title: str) -> Figure:
    """Accuracy against the share of missing pixels, one line per method: i.i.d. pixels (left)
    and rectangles (right, the patterns ordered by their share). ``rows``: those of
    :func:`run_protocol`; the ConvAC in black, each baseline classifier in a colour,
    its imputation by the line style (mean solid, zero dotted, KNN dashed)."""
    methods = [k for k in rows[0] if k not in ("pattern", "kind", "missing_share")]
    classifiers = list(dict.fromkeys(m.rsplit("_", 1)[0] for m in methods if m != "convac"))
    colors = dict(zip(classifiers, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = {"mean": "-", "zero": ":", "knn": "--"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, kind in zip(axes, ("iid", "rectangles")):
        part = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["missing_share"])
        share = [r["missing_share"] for r in part]
        for method in methods:
            if method == "convac":
                style = dict(color="black", linewidth=2.5, marker="o", label="convac (exact marginalization)", zorder=3)
            else:
                classifier, imputation = method.rsplit("_", 1)
                style = dict(color=colors[classifier], linestyle=styles.get(imputation, "-."), marker=".",
                             linewidth=1.2, label=f"{classifier}, {imputation} imputed")
            ax.plot(share, [r[method] for r in part], **style)
        ax.set(xlabel="share of pixels missing", title="pixels missing i.i.d." if kind == "iid" else
               "missing rectangles (1-3 squares per image)", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
