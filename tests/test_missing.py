"""Classification with missing data (scripts/missing_protocol.py): the masks of the TMM protocol
have the requested shares and sizes, and the protocol runs end to end on a small subset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from convac import Categorical, HTConvAC, load_pretrained
from convac.data import DigitsDataModule, create_datamodule
from tests.conftest import SHARED_DATA, imported_script


@pytest.fixture(scope="module")
def missing_protocol():
    """``scripts/missing_protocol.py``, the experiment driver under test."""
    yield from imported_script("missing_protocol")


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.9, 0.99, 1.0])
def test_iid_mask_has_the_requested_share(missing_protocol, rate):
    mask = missing_protocol.iid_mask((500, 1, 28, 28), rate, torch.Generator().manual_seed(0))
    se = np.sqrt(rate * (1 - rate) / mask.numel())
    assert mask.dtype == torch.bool and abs(mask.double().mean().item() - rate) <= 4 * se


def union_of_squares(mask: torch.Tensor, side: int) -> torch.Tensor:
    """The pixels of ``mask`` (N, H, W) covered by some all-True ``side x side`` window of it
    (a morphological opening): equal to ``mask`` exactly when it is a union of such squares."""
    full = -F.max_pool2d(-mask.double().unsqueeze(1), side, stride=1)  # 1 where the window is all True
    return F.max_pool2d(F.pad(full, [side - 1] * 4), side, stride=1).squeeze(1).bool()


def expected_share(h: int, w: int, side: int, count: int) -> float:
    """The mean share covered by ``count`` independent squares with uniform top-left corners."""
    def covers(n):  # per coordinate: the share of corner positions whose square covers it
        positions = n - side + 1
        return np.array([sum(1 for t in range(positions) if t <= i < t + side) / positions for i in range(n)])

    one = np.outer(covers(h), covers(w))
    return float(np.mean(1 - (1 - one) ** count))


@pytest.mark.parametrize("count,side", [(1, 7), (2, 11), (3, 15), (3, 7)])
def test_rectangles_are_count_squares_of_the_requested_side(missing_protocol, count, side):
    n = 2000
    mask = missing_protocol.rectangles_mask((n, 2, 28, 28), count, side, torch.Generator().manual_seed(1))
    assert mask.shape == (n, 2, 28, 28) and torch.equal(mask[:, 0], mask[:, 1])  # every channel of a pixel
    mask = mask[:, 0]
    area = mask.flatten(1).sum(1)
    assert torch.all(area >= side * side) and torch.all(area <= count * side * side)
    assert torch.equal(union_of_squares(mask, side), mask)  # a union of side x side squares, inside the image
    assert not torch.equal(union_of_squares(mask, side + 1), mask)
    if count == 1:
        assert torch.all(area == side * side)
        rows, cols = mask.any(2), mask.any(1)
        assert torch.all(rows.sum(1) == side) and torch.all(cols.sum(1) == side)
    share = mask.double().mean().item()
    se = area.double().std().item() / 784 / np.sqrt(n)  # 0 for one square: its share is exact
    assert share == pytest.approx(expected_share(28, 28, side, count), abs=4 * se + 1e-12)


def test_protocol_masks_are_seeded_and_named(missing_protocol):
    shape = (10, 1, 28, 28)
    masks = missing_protocol.protocol_masks(shape, missing_protocol.PROTOCOLS["mnist"], seed=3)
    assert list(masks) == ["iid 0", "iid 0.25", "iid 0.5", "iid 0.75", "iid 0.9", "iid 0.95", "iid 0.99",
                           *(f"{c} x {s}x{s}" for s in (7, 11, 15) for c in (1, 2, 3))]
    again = missing_protocol.protocol_masks(shape, missing_protocol.PROTOCOLS["mnist"], seed=3)
    assert all(torch.equal(masks[k], again[k]) for k in masks)
    assert not torch.equal(masks["iid 0.5"], missing_protocol.protocol_masks(shape, missing_protocol.PROTOCOLS["mnist"], seed=4)["iid 0.5"])
    with pytest.raises(ValueError, match="side must be in"):
        missing_protocol.rectangles_mask((1, 1, 8, 8), 1, 9, torch.Generator())


def test_imputations(missing_protocol):
    train = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.2, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.1], [0.9, 1.0, 0.8]])
    fill = missing_protocol.imputers(train, knn_rows=0)
    x = np.array([[np.nan, 1.0, 1.0]])
    np.testing.assert_allclose(fill["mean"](x), [[train[:, 0].mean(), 1.0, 1.0]])
    np.testing.assert_allclose(fill["zero"](x), [[0.0, 1.0, 1.0]])
    distances = np.sqrt(((train[:, 1:] - x[:, 1:]) ** 2).sum(1))  # over the observed pixels
    nearest = np.argsort(distances, kind="stable")[:5]
    np.testing.assert_allclose(fill["knn"](x), [[train[nearest, 0].mean(), 1.0, 1.0]])


def test_protocol_end_to_end_on_a_small_digits_subset(missing_protocol, tmp_path):
    model = load_pretrained("ht_digits_classifier").eval()
    data = DigitsDataModule()
    (train_x, train_y), (test_x, test_y) = data.split("train"), data.split("test")
    train, test = (train_x[:300], train_y[:300]), (test_x[:60], test_y[:60])
    protocol = missing_protocol.Protocol(rates=(0.0, 0.5), counts=(1, 3), sides=(2, 4))
    result = missing_protocol.run_protocol(model, train, test, protocol, num_values=17, knn_rows=100)
    rows = {r["pattern"]: r for r in result["rows"]}
    assert list(rows) == ["iid 0", "iid 0.5", "1 x 2x2", "3 x 2x2", "1 x 4x4", "3 x 4x4"]
    methods = ["convac"] + [f"{c}_{i}" for i in ("mean", "zero", "knn") for c in ("svm_rbf", "logreg", "mlp")]
    assert all(set(r) == {"pattern", "kind", "missing_share", *methods} for r in rows.values())
    assert all(0.0 <= r[m] <= 1.0 for r in rows.values() for m in methods)
    complete = rows["iid 0"]
    assert complete["missing_share"] == 0.0 and rows["1 x 2x2"]["missing_share"] == 4 / 64
    assert complete["convac"] == (model.log_posterior(test[0]).argmax(1) == test[1]).double().mean().item()
    for classifier in ("svm_rbf", "logreg", "mlp"):  # nothing missing: every imputation is the image itself
        assert complete[f"{classifier}_mean"] == complete[f"{classifier}_zero"] == complete[f"{classifier}_knn"]
    assert complete["convac"] > 0.8 and complete["svm_rbf_mean"] > 0.8  # trained models, not chance
    assert set(result["seconds"]) >= {"fit_baselines", "convac", "impute_knn"}
    assert len(missing_protocol.markdown_table(result["rows"]).splitlines()) == 2 + len(rows)
    path = missing_protocol.plot_missing(result["rows"], "test", tmp_path / "missing.png")
    with Image.open(path) as image:
        assert image.format == "PNG"


@pytest.mark.skipif(not (SHARED_DATA / "mnist-t10k").is_dir(), reason="no ../shared/data/mnist-t10k")
def test_mnist_protocol_on_a_tiny_subset(missing_protocol):
    data = create_datamodule("mnist", root=str(SHARED_DATA / "mnist-t10k"), split="t10k")
    (train_x, train_y), (test_x, test_y) = data.split("train"), data.split("test")
    assert (len(train_y), len(test_y)) == (7200, 2000)  # the first 8,000 (10% for validation), the last 2,000
    model = HTConvAC((1, 28, 28), Categorical(256), num_components=2, channels=2, num_classes=10, share_leaves=True)
    result = missing_protocol.run_protocol(model, (train_x[:100], train_y[:100]), (test_x[:20], test_y[:20]), missing_protocol.PROTOCOLS["mnist"],
                          num_values=256, knn_rows=50)
    assert len(result["rows"]) == 7 + 9
    shares = {r["pattern"]: r["missing_share"] for r in result["rows"]}
    assert shares["1 x 7x7"] == 49 / 784 and shares["1 x 15x15"] == 225 / 784 and shares["iid 0.99"] > 0.98


def test_convac_accuracy_batches_agree(missing_protocol):
    model = HTConvAC((1, 8, 8), Categorical(17), num_components=2, channels=3, num_classes=10)
    x, y = DigitsDataModule().split("test")
    missing = missing_protocol.iid_mask(tuple(x.shape), 0.5, torch.Generator().manual_seed(0))
    assert missing_protocol.convac_accuracy(model, x, y, missing, batch_size=7) == missing_protocol.convac_accuracy(model, x, y, missing, batch_size=1000)
