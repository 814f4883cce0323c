"""DataModules: splits, dtypes, declared layouts, file readers and their error messages."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from convac.data import DATAMODULES, create_datamodule
from convac.data.base import hold_out
from convac.data.debd import read_debd
from convac.data.idx import load_idx_pair, read_idx
from tests.conftest import SHARED_DATA


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    """Write ``array`` (uint8) as an IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_hold_out_is_seeded_and_disjoint():
    x, y = torch.arange(20).view(20, 1, 1, 1), torch.arange(20)
    (kx, ky), (ox, oy) = hold_out(x, y, 0.25, seed=3)
    assert len(ox) == 5 and len(kx) == 15
    assert set(ky.tolist()).isdisjoint(oy.tolist())
    assert torch.equal(hold_out(x, y, 0.25, seed=3)[1][1], oy)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        hold_out(x, y, 1.0, seed=0)


def test_digits_splits_layout_and_continuous():
    dm = create_datamodule("digits")
    dm.setup()
    sizes = {k: len(dm.split(k)[0]) for k in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 359
    x, y = dm.split("train")
    assert x.dtype == torch.long and x.shape[1:] == (1, 8, 8) and int(x.max()) == 16
    assert (dm.in_shape, dm.num_values, dm.num_classes, dm.bin_width) == ((1, 8, 8), 17, 10, None)
    assert set(y.tolist()) == set(range(10))

    cont = create_datamodule("digits", continuous=True)
    xc, yc = cont.split("train")
    assert xc.dtype == torch.float32 and float(xc.max()) == 1.0 and cont.bin_width == 1 / 16
    assert torch.equal(xc * 16, x.float()) and torch.equal(yc, y)  # same seeded split
    batch = next(iter(cont.train_dataloader()))
    assert batch[0].shape == (64, 1, 8, 8)


def test_declared_layout_is_checked():
    with pytest.raises(ValueError, match=r"data.in_shape is \[1, 4, 4\].*set data.in_shape=\[1, 8, 8\]"):
        create_datamodule("digits", in_shape=[1, 4, 4]).setup()
    with pytest.raises(ValueError, match=r"data.num_values is 10 .* values in \[0, 16\]"):
        create_datamodule("digits", num_values=10).setup()
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*digits"):
        create_datamodule("cifar")
    assert set(DATAMODULES) == {"digits", "mnist", "fashion_mnist", "debd", "synthetic", "array", "table", "image_folder"}


def test_resize_serves_block_means_of_the_images():
    full = create_datamodule("digits").split("train")[0]  # (N, 1, 8, 8)
    with pytest.raises(ValueError, match=r"or data.resize=true"):
        create_datamodule("digits", in_shape=[1, 4, 4]).setup()
    small = create_datamodule("digits", in_shape=[1, 4, 2], resize=True).split("train")[0]
    blocks = full.view(-1, 1, 4, 2, 2, 4).double().mean((3, 5))  # 2x4 blocks
    assert small.dtype == torch.long and small.shape[1:] == (1, 4, 2)
    assert torch.equal(small, blocks.round().long())
    assert int(small.max()) <= 16 and int(small.min()) >= 0
    same = create_datamodule("digits", resize=True).split("train")[0]  # already 8x8: untouched
    assert torch.equal(same, full)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_round_trip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    labels = np.arange(5)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, gz)
    x, y = load_idx_pair(tmp_path, "t10k")
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.long
    assert np.array_equal(x[:, 0].numpy(), images) and y.tolist() == labels.tolist()


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((2, 3)))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"header says shape \(2, 3\)"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_missing_files_are_named(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte") as err:
        create_datamodule(name, root=str(tmp_path), split="t10k").setup()
    assert name in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        create_datamodule(name, root=str(tmp_path)).setup()
    with pytest.raises(ValueError, match="data.split must be one of"):
        create_datamodule(name, root=str(tmp_path), split="valid")


@pytest.mark.skipif(not (SHARED_DATA / "mnist-t10k").is_dir(), reason="no ../shared/data/mnist-t10k")
def test_mnist_t10k_real_files():
    dm = create_datamodule("mnist", root=str(SHARED_DATA / "mnist-t10k"), split="t10k")
    (xtr, ytr), (xva, _), (xte, yte) = (dm.split(k) for k in ("train", "val", "test"))
    assert (len(xtr), len(xva), len(xte)) == (7200, 800, 2000)
    assert xte.shape[1:] == (1, 28, 28) and xte.dtype == torch.long
    assert int(xte.max()) == 255 and set(yte.tolist()) == set(range(10))
    # the test split is the last 2,000 t10k images, in file order
    images, labels = load_idx_pair(SHARED_DATA / "mnist-t10k", "t10k")
    assert torch.equal(xte, images[8000:]) and torch.equal(yte, labels[8000:])


def _write_debd(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("train", "valid", "test"):
        np.savetxt(folder / f"{name}.{suffix}.data", rows, fmt="%d", delimiter=",")


@pytest.mark.parametrize("nested", [False, True])
def test_debd_files(tmp_path, nested):
    rows = np.random.default_rng(0).integers(0, 2, (7, 5))
    _write_debd(tmp_path / "toy" if nested else tmp_path, "toy", rows)
    dm = create_datamodule("debd", root=str(tmp_path), dataset="toy")  # the shape read from the files
    x, y = dm.split("val")
    assert x.shape == (7, 1, 1, 5) and x.dtype == torch.long and y.eq(0).all()
    assert np.array_equal(x[:, 0, 0].numpy(), rows)
    assert dm.layout == {"in_shape": [1, 1, 5], "num_values": 2, "num_classes": 1, "train_size": 7}
    assert dm.hparams.in_shape == [1, 1, 5]  # stored in checkpoints
    with pytest.raises(ValueError, match=r"data.in_shape is \[1, 1, 16\] .* shape \[1, 1, 5\]; set data.in_shape=\[1, 1, 5\]"):
        create_datamodule("debd", root=str(tmp_path), dataset="toy", in_shape=[1, 1, 16]).setup()
    with pytest.raises(FileNotFoundError, match="nope.train.data, nope.valid.data, nope.test.data"):
        create_datamodule("debd", root=str(tmp_path), dataset="nope").setup()


@pytest.mark.skipif(not (SHARED_DATA / "debd").is_dir(), reason="no ../shared/data/debd")
def test_debd_real_files():
    x = read_debd(SHARED_DATA / "debd" / "nltcs" / "nltcs.valid.data")
    assert x.shape == (2157, 1, 1, 16) and set(x.unique().tolist()) == {0, 1}


def test_synthetic_teacher_is_fixed_and_known():
    a = create_datamodule("synthetic", num_train=50, num_val=10, num_test=20, num_classes=2)
    b = create_datamodule("synthetic", num_train=50, num_val=10, num_test=20, num_classes=2)
    xa, ya = a.split("test")
    assert xa.shape == (20, 1, 8, 8) and xa.dtype == torch.long and int(xa.max()) < 4
    assert torch.equal(xa, b.split("test")[0]) and torch.equal(ya, b.split("test")[1])
    nll = a.teacher_nll("test")
    assert nll == pytest.approx(-a.teacher.log_prob(xa).mean().item())
    assert 0 < nll < 64 * np.log(4)  # a sharp teacher beats the uniform distribution
    other = create_datamodule("synthetic", seed=1, num_train=50, num_val=10, num_test=20)
    assert not torch.equal(other.split("test")[0], xa)


def test_debd_max_train_rows_keeps_the_first_training_rows(tmp_path):
    """``data.max_train_rows=N``: the first N rows of the training file (a small-data cut); the
    validation and test splits stay whole; a bad value is refused."""
    rows = np.random.default_rng(0).integers(0, 2, (9, 5))
    for suffix in ("train", "valid", "test"):
        np.savetxt(tmp_path / f"toy.{suffix}.data", rows, fmt="%d", delimiter=",")
    dm = create_datamodule("debd", root=str(tmp_path), dataset="toy", max_train_rows=4)
    assert np.array_equal(dm.split("train")[0][:, 0, 0].numpy(), rows[:4])
    assert len(dm.split("val")[0]) == 9 and len(dm.split("test")[0]) == 9
    assert len(create_datamodule("debd", root=str(tmp_path), dataset="toy", max_train_rows=100).split("train")[0]) == 9
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_train_rows"):
            create_datamodule("debd", root=str(tmp_path), dataset="toy", max_train_rows=bad)


def test_train_size_is_read_after_the_cut_and_a_declared_one_is_checked(tmp_path):
    """``data.train_size`` (what the DEBD recipe's rule reads): the training examples as served,
    after ``max_train_rows``; a declared value that differs is refused, naming both."""
    rows = np.random.default_rng(0).integers(0, 2, (9, 5))
    for suffix in ("train", "valid", "test"):
        np.savetxt(tmp_path / f"toy.{suffix}.data", rows, fmt="%d", delimiter=",")
    assert create_datamodule("debd", root=str(tmp_path), dataset="toy").layout["train_size"] == 9
    assert create_datamodule("debd", root=str(tmp_path), dataset="toy", max_train_rows=4).layout["train_size"] == 4
    assert create_datamodule("debd", root=str(tmp_path), dataset="toy", train_size=9).layout["train_size"] == 9
    with pytest.raises(ValueError, match="data.train_size is 4 but the debd train split has 9 examples"):
        create_datamodule("debd", root=str(tmp_path), dataset="toy", train_size=4).setup()

