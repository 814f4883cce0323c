"""Your own data: data=array, data=table, data=image_folder on small generated files,
the layout read from the data, missing values marginalized, one-line errors, and end-to-end runs."""
from __future__ import annotations

import csv
import itertools
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from convac import create_model
from convac.cli.common import setup_data
from convac.cli.eval import evaluate
from convac.config import schema
from convac.data import create_datamodule
from convac.training import ConvACModule
from tests.conftest import SHARED_DATA
from tests.test_reliability import TINY, assert_no_run_files, assert_user_error


def sizes(dm) -> dict[str, int]:
    return {split: len(dm.split(split)[0]) for split in ("train", "val", "test")}


def rows_of(x: torch.Tensor | np.ndarray) -> list[tuple]:
    """The samples of ``x`` as sorted tuples (a multiset; NaN as -1)."""
    x = torch.as_tensor(x).double()
    return sorted(tuple(row.tolist()) for row in x.nan_to_num(-1.0).reshape(len(x), -1))


# ------------------------------------------------------------------------------------ arrays
def test_array_npy_sequences_layout_and_seeded_splits(tmp_path):
    x = np.random.default_rng(0).integers(0, 5, (50, 7))
    np.save(tmp_path / "x.npy", x)
    dm = create_datamodule("array", path=str(tmp_path / "x.npy"))
    assert dm.layout == {"in_shape": [1, 1, 7], "num_values": int(x.max()) + 1, "num_classes": 1, "train_size": 36}
    assert sizes(dm) == {"train": 36, "val": 4, "test": 10}  # 20% test, then 10% of the rest
    served = torch.cat([dm.split(s)[0] for s in ("train", "val", "test")])
    assert served.dtype == torch.long and served.shape == (50, 1, 1, 7)
    assert rows_of(served) == rows_of(x)  # every row once, in one of the splits
    again = create_datamodule("array", path=str(tmp_path / "x.npy"))
    assert torch.equal(again.split("test")[0], dm.split("test")[0])
    other = create_datamodule("array", path=str(tmp_path / "x.npy"), seed=1)
    assert not torch.equal(other.split("test")[0], dm.split("test")[0])
    assert create_datamodule("array", path=str(tmp_path / "x.npy"), num_values=9).layout["num_values"] == 9


def test_array_npz_images_with_labels(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 3, (40, 5, 6)), rng.integers(0, 4, 40)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    dm = create_datamodule("array", path=str(tmp_path / "d.npz"))
    assert dm.layout == {"in_shape": [1, 5, 6], "num_values": 3, "num_classes": 4, "train_size": 29}
    pairs = {(tuple(a.reshape(-1).tolist()), int(b)) for s in ("train", "val", "test") for a, b in zip(*dm.split(s))}
    assert pairs == {(tuple(a.reshape(-1).tolist()), int(b)) for a, b in zip(x, y)}  # labels stay with their samples
    x4 = rng.integers(0, 2, (10, 3, 4, 4))
    np.save(tmp_path / "rgb.npy", x4)
    assert create_datamodule("array", path=str(tmp_path / "rgb.npy")).layout["in_shape"] == [3, 4, 4]


def test_array_given_splits(tmp_path):
    rng = np.random.default_rng(2)
    x_train, x_test = rng.integers(0, 2, (30, 4)), rng.integers(0, 2, (8, 4))
    np.savez(tmp_path / "s.npz", x_train=x_train, y_train=rng.integers(0, 2, 30), x_test=x_test, y_test=np.ones(8, int))
    dm = create_datamodule("array", path=str(tmp_path / "s.npz"), val_fraction=0.2)
    assert sizes(dm) == {"train": 24, "val": 6, "test": 8}  # val held out of x_train only
    assert np.array_equal(dm.split("test")[0][:, 0, 0].numpy(), x_test) and dm.split("test")[1].eq(1).all()
    x_val = rng.integers(0, 2, (5, 4))
    np.savez(tmp_path / "s3.npz", x_train=x_train, x_val=x_val, x_test=x_test)
    dm = create_datamodule("array", path=str(tmp_path / "s3.npz"))
    assert sizes(dm) == {"train": 30, "val": 5, "test": 8} and dm.num_classes == 1
    assert np.array_equal(dm.split("train")[0][:, 0, 0].numpy(), x_train)


def test_array_missing_values_are_nan_in_float_batches(tmp_path):
    x = np.random.default_rng(3).integers(0, 4, (20, 3, 3)).astype(float)
    x[0, 1, 1] = x[5, 0, 2] = np.nan
    np.save(tmp_path / "m.npy", x)
    dm = create_datamodule("array", path=str(tmp_path / "m.npy"), test_fraction=0.0, val_fraction=0.0)
    served, _ = dm.split("train")  # the contract a structure learner reads: NaN marks a missing entry
    assert dm.has_missing and served.dtype == torch.float32 and int(torch.isnan(served).sum()) == 2
    assert rows_of(served) == rows_of(x)
    assert dm.num_values == int(np.nanmax(x)) + 1
    batch = next(iter(dm.train_dataloader()))[0]
    assert batch.dtype == torch.float32
    cont = create_datamodule("array", path=str(tmp_path / "m.npy"), continuous=True, test_fraction=0.0, val_fraction=0.0)
    xc = cont.split("train")[0]
    assert torch.equal(torch.isnan(xc), torch.isnan(served)) and float(xc.nan_to_num().max()) == 1.0
    assert cont.bin_width == pytest.approx(1 / 3)


def test_array_real_values_need_continuous(tmp_path):
    x = np.random.default_rng(4).normal(size=(20, 5))
    x[3, 2] = np.nan
    np.save(tmp_path / "r.npy", x)
    with pytest.raises(ValueError, match=r"holds non-integer values \(e.g. .*\) but data.continuous is false"):
        create_datamodule("array", path=str(tmp_path / "r.npy")).setup()
    dm = create_datamodule("array", path=str(tmp_path / "r.npy"), continuous=True)
    assert dm.layout == {"in_shape": [1, 1, 5], "num_values": None, "num_classes": 1, "train_size": 14} and dm.bin_width is None
    served = torch.cat([dm.split(s)[0] for s in ("train", "val", "test")])
    assert rows_of(served) == rows_of(torch.from_numpy(x).float())  # as read, NaN kept
    with pytest.raises(ValueError, match="model/leaf=gaussian"):
        dm.check_leaf({"name": "categorical"})
    dm.check_leaf({"name": "gaussian", "min_std": 0.001})
    with pytest.raises(ValueError, match="data.num_values is 4 but .* holds real values"):
        create_datamodule("array", path=str(tmp_path / "r.npy"), continuous=True, num_values=4).setup()


def _save(path: Path, content) -> Path:
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    return path


BAD_ARRAYS = {
    # name: (file name, writer, words of the message)
    "garbage": ("g.npy", b"not an array at all", ["g.npy", "not a readable .npy file"]),
    "truncated_npz": ("t.npz", b"PK\x03\x04 truncated", ["t.npz", "not a readable .npz file"]),
    "ragged_rows": ("o.npy", lambda p: np.save(p, np.array([[1, 2], [3]], dtype=object), allow_pickle=True),
                    ["o.npy", "object array", "mixed shapes"]),
    "mixed_split_shapes": ("m.npz", lambda p: np.savez(p, x_train=np.zeros((4, 3, 3)), x_test=np.zeros((2, 3, 4))),
                           ["the array test split has samples of shape [1, 3, 4] but the train split [1, 3, 3]",
                            "mixed shapes"]),
    "five_dims": ("f.npy", lambda p: np.save(p, np.zeros((2, 1, 1, 2, 2))),
                  ["x has shape [2, 1, 1, 2, 2]", "expected (N, C, H, W), (N, H, W) or (N, D)"]),
    "strings": ("s.npy", lambda p: np.save(p, np.array([["a", "b"]])), ["x has dtype <U1", "expected integers or floats"]),
    "negative_codes": ("n.npy", lambda p: np.save(p, np.array([[0, -1], [1, 2]])),
                       ["holds values in [-1, 2]", "codes 0, 1, ..."]),
    "infinite": ("i.npy", lambda p: np.save(p, np.array([[0.0, np.inf], [1.0, 2.0]])), ["infinite values"]),
    "float_labels": ("l.npz", lambda p: np.savez(p, x=np.zeros((3, 2)), y=np.array([0, 1.5, 1])),
                     ["y holds non-integer labels (e.g. 1.5)", "class indices"]),
    "negative_labels": ("nl.npz", lambda p: np.savez(p, x=np.zeros((3, 2)), y=np.array([0, -2, 1])),
                        ["labels in [-2, ", "class indices"]),
    "label_count": ("c.npz", lambda p: np.savez(p, x=np.zeros((3, 2)), y=np.array([0, 1])),
                    ["y has shape [2]", "expected (3,)"]),
    "unknown_keys": ("k.npz", lambda p: np.savez(p, data=np.zeros((3, 2))),
                     ["holds the arrays ['data']", "expected x (and y), or x_train"]),
    "labels_for_one_split": ("y.npz", lambda p: np.savez(p, x_train=np.zeros((3, 2)), y_train=np.zeros(3), x_test=np.zeros((2, 2))),
                             ["labels for some splits only (train)"]),
    "wrong_suffix": ("x.csv", b"1,2\n", ["data.path=", "x.csv", "expected a .npy or .npz file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays_one_line_errors(tmp_path, case):
    name, content, words = BAD_ARRAYS[case]
    path = _save(tmp_path / name, content)
    with pytest.raises(ValueError) as err:
        create_datamodule("array", path=str(path)).setup()
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_array_declared_layout_is_checked(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((6, 2, 2), int), y=np.array([0, 1, 2, 0, 1, 2]))
    path = str(tmp_path / "d.npz")
    with pytest.raises(ValueError, match=r"data.in_shape is \[1, 4, 4\] but .* \[1, 2, 2\]"):
        create_datamodule("array", path=path, in_shape=[1, 4, 4]).setup()
    with pytest.raises(ValueError, match=r"data.num_classes is 2 but the array \w+ split has labels in \[0, 2\]"):
        create_datamodule("array", path=path, num_classes=2, test_fraction=0.0, val_fraction=0.0).setup()
    with pytest.raises(ValueError, match=r"data.num_values is 1 but"):
        create_datamodule("array", path=path, num_values=1).setup()
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_datamodule("array", path=str(tmp_path / "absent.npy")).setup()


# ------------------------------------------------------------------------------------ tables
def write_csv(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_table_header_label_column_and_missing_cells(tmp_path):
    rows = [["a", "b", "label", "c"]] + [[i % 3, (i // 3) % 2, i % 2, i % 4] for i in range(20)]
    rows[4][1] = ""       # an empty cell
    rows[7][3] = "NaN"    # a NaN cell
    path = write_csv(tmp_path / "t.csv", rows)
    dm = create_datamodule("table", path=str(path), label_column="label", test_fraction=0.0, val_fraction=0.0)
    assert dm.layout == {"in_shape": [1, 1, 3], "num_values": 4, "num_classes": 2, "train_size": 20} and dm.columns == ["a", "b", "c"]
    x, y = dm.split("train")
    assert x.dtype == torch.float32 and int(torch.isnan(x).sum()) == 2 and dm.has_missing
    expected = [[r[0], -1 if r[1] == "" else r[1], -1 if r[3] == "NaN" else r[3], r[2]] for r in rows[1:]]
    assert rows_of(torch.cat([x[:, 0, 0], y[:, None].float()], 1)) == rows_of(np.array(expected, dtype=float))
    # no header: every column a variable, or a label column by position
    bare = write_csv(tmp_path / "bare.csv", [[1, 0, 2], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    assert create_datamodule("table", path=str(bare)).layout == {"in_shape": [1, 1, 3], "num_values": 3, "num_classes": 1, "train_size": 3}
    dm = create_datamodule("table", path=str(bare), label_column="2", test_fraction=0.0, val_fraction=0.0)
    assert dm.layout["num_classes"] == 3 and sorted(dm.split("train")[1].tolist()) == [0, 1, 1, 2]
    with pytest.raises(ValueError, match="data.label_column='x' is not one of the header's columns 1, 0, 2"):
        create_datamodule("table", path=str(bare), header=True, label_column="x").setup()


BAD_TABLES = {
    # name: (content, overrides, words)
    "ragged_row": ("a,b,c\n1,0,1\n0,1\n", {}, ["line 3: 2 cells but the header has 3", "mixed row lengths"]),
    "not_a_number": ("a,b\n1,0\n0,yes\n", {}, ["line 3, column 'b': 'yes' is not a number"]),
    "non_integer": ("a,b\n1,0.5\n0,1\n", {}, ["holds non-integer values (e.g. 0.5) but data.continuous is false"]),
    "label_not_integer": ("a,y\n1,0\n0,\n", {"label_column": "y"}, ["line 3: the label column 'y' holds nan"]),
    "unknown_label_column": ("a,b\n1,0\n", {"label_column": "y"}, ["data.label_column='y' is not one of the header's columns a, b"]),
    "label_position_without_header": ("1,0\n0,1\n", {"label_column": "y"}, ["positions 0..1 (the file has no header row)"]),
    "labels_out_of_range": ("a,y\n1,0\n0,3\n", {"label_column": "y", "num_classes": 2}, ["data.num_classes is 2",
                                                                                          "labels in [0, 3]"]),
    "empty": ("", {}, ["no rows"]),
    "header_only": ("a,b\n", {}, ["a header row and no data rows"]),
    "binary": (b"\xff\xfe\x00\x01garbage", {}, ["not a readable CSV text file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables_one_line_errors(tmp_path, case):
    content, overrides, words = BAD_TABLES[case]
    path = tmp_path / "bad.csv"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(ValueError) as err:
        create_datamodule("table", path=str(path), test_fraction=0.0, val_fraction=0.0, **overrides).setup()
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


# ------------------------------------------------------------------------------ image folders
def write_image_folder(root: Path, classes: dict[str, int], size=(6, 5), mode="RGB", seed=0) -> dict[Path, np.ndarray]:
    """``classes[name]`` random PNG images (lossless) of ``size`` (H, W) per class subfolder;
    returns each file's pixels as (C, H, W) uint8."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in classes.items():
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            channels = 3 if mode == "RGB" else 1
            pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
            path = folder / f"img{i}.png"
            Image.fromarray(pixels if mode == "RGB" else pixels[..., 0], mode).save(path)
            written[path] = pixels.transpose(2, 0, 1)
    return written


def test_image_folder_rgb_classes_pixels_and_quantization(tmp_path):
    written = write_image_folder(tmp_path, {"circle": 6, "square": 4, "triangle": 5})
    (tmp_path / "circle" / "notes.txt").write_text("not an image")  # skipped
    dm = create_datamodule("image_folder", root=str(tmp_path))
    assert dm.layout == {"in_shape": [3, 6, 5], "num_values": 256, "num_classes": 3, "train_size": 11}
    assert dm.classes == ["circle", "square", "triangle"] and sum(sizes(dm).values()) == 15
    served = {(tuple(x.reshape(-1).tolist()), int(y)) for s in ("train", "val", "test") for x, y in zip(*dm.split(s))}
    labels = {"circle": 0, "square": 1, "triangle": 2}
    assert served == {(tuple(p.reshape(-1).tolist()), labels[path.parent.name]) for path, p in written.items()}
    levels = create_datamodule("image_folder", root=str(tmp_path), num_values=4)
    x = torch.cat([levels.split(s)[0] for s in ("train", "val", "test")])
    assert x.dtype == torch.long and set(x.unique().tolist()) == {0, 1, 2, 3}
    assert rows_of(x) == rows_of(np.stack(list(written.values())).astype(int) * 4 // 256)
    cont = create_datamodule("image_folder", root=str(tmp_path), continuous=True)
    xc = cont.split("train")[0]
    assert xc.dtype == torch.float32 and 0.0 <= float(xc.min()) and float(xc.max()) <= 1.0 and cont.bin_width == 1 / 255
    assert torch.allclose(xc * 255, dm.split("train")[0].float())


def test_image_folder_modes_and_sizes(tmp_path):
    gray = write_image_folder(tmp_path / "gray", {"a": 3, "b": 3}, mode="L")
    dm = create_datamodule("image_folder", root=str(tmp_path / "gray"))
    assert dm.layout["in_shape"] == [1, 6, 5]
    assert rows_of(torch.cat([dm.split(s)[0] for s in ("train", "val", "test")])) == rows_of(np.stack(list(gray.values())))
    assert create_datamodule("image_folder", root=str(tmp_path / "gray"), mode="RGB").layout["in_shape"] == [3, 6, 5]
    # one colour image makes the folder RGB; grey images then have three equal channels
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / "gray" / "b" / "c.png")
    mixed = create_datamodule("image_folder", root=str(tmp_path / "gray"), test_fraction=0.0, val_fraction=0.0)
    x = mixed.split("train")[0]
    assert mixed.in_shape == (3, 6, 5) and len(x) == 7
    assert sum(bool(torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])) for img in x) == 6
    # resized to a common size; unlabelled when the root holds the images
    write_image_folder(tmp_path / "loose", {"": 4}, size=(9, 7))
    dm = create_datamodule("image_folder", root=str(tmp_path / "loose"), size=[4, 3])
    assert dm.layout == {"in_shape": [3, 4, 3], "num_values": 256, "num_classes": 1, "train_size": 3}


BAD_FOLDERS = {
    # name: (builder, kwargs, words)
    "mixed_sizes": (lambda r: (write_image_folder(r, {"a": 2}), write_image_folder(r, {"b": 2}, size=(7, 7))), {},
                    ["images of mixed sizes", "is 6x5 (HxW) but", "is 7x7", "set data.size=[H, W]"]),
    "corrupt_image": (lambda r: (write_image_folder(r, {"a": 2}), (r / "a" / "bad.png").write_bytes(b"\x89PNG broken")), {},
                      ["bad.png: cannot read the image"]),
    "empty_class": (lambda r: (write_image_folder(r, {"a": 2}), (r / "b").mkdir()), {},
                    ["the class folder b/ holds no images"]),
    "no_images": (lambda r: (r / "notes.txt").write_text("x"), {}, ["holds no images", "and no class subfolders"]),
    "images_and_folders": (lambda r: (write_image_folder(r, {"a": 2}), write_image_folder(r, {"": 1})), {},
                           ["holds both class subfolders (a) and images (img0.png)"]),
    "sixteen_bit": (lambda r: (write_image_folder(r, {"a": 2}),
                               Image.fromarray(np.full((6, 5), 4000, np.uint16)).save(r / "a" / "deep.png")), {},
                    ["deep.png is a I;16 image", "reads 8-bit images"]),
    "too_many_levels": (lambda r: write_image_folder(r, {"a": 2}), {"num_values": 300}, ["data.num_values must be in [2, 256]"]),
    "labels_out_of_range": (lambda r: write_image_folder(r, {"a": 2, "b": 2, "c": 2}), {"num_classes": 2},
                            ["data.num_classes is 2", "labels in [0, 2]"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_image_folders_one_line_errors(tmp_path, case):
    build, kwargs, words = BAD_FOLDERS[case]
    root = tmp_path / "images"
    root.mkdir()
    build(root)
    with pytest.raises(ValueError) as err:
        create_datamodule("image_folder", root=str(root), test_fraction=0.0, val_fraction=0.0, **kwargs).setup()
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value), str(err.value)


# ------------------------------------------------------------ missing values marginalized
def brute_force(log_p, x: torch.Tensor, num_values: int) -> torch.Tensor:
    """``log sum exp log_p(x)`` over every completion of the missing (NaN) entries of each row
    of ``x`` (exact enumeration); ``log_p``: complete long inputs ``(n, C, H, W)`` -> ``(n,)``."""
    out = []
    for row in x:
        holes = torch.isnan(row).nonzero().tolist()
        completions = []
        for values in itertools.product(range(num_values), repeat=len(holes)):
            filled = row.clone()
            for index, value in zip(holes, values):
                filled[tuple(index)] = value
            completions.append(filled.long())
        out.append(torch.logsumexp(log_p(torch.stack(completions)), 0))
    return torch.stack(out)


def test_missing_cells_are_marginalized_in_validation_and_test(tmp_path):
    """A table with empty cells -> DataModule -> batches -> ConvACModule: the logged val/test
    NLL is the mean of the exact marginal likelihoods, brute-forced over the missing cells."""
    rng = np.random.default_rng(0)
    rows = [["a", "b", "c", "d", "y"]]
    for i in range(30):
        row = [int(v) for v in rng.integers(0, 3, 4)] + [i % 2]
        for j in rng.choice(4, size=rng.integers(0, 3), replace=False):
            row[j] = ""  # up to two missing cells per row
        rows.append(row)
    path = write_csv(tmp_path / "m.csv", rows)
    dm = create_datamodule("table", path=str(path), label_column="y", batch_size=8, test_fraction=0.3, val_fraction=0.3)
    assert dm.layout == {"in_shape": [1, 1, 4], "num_values": 3, "num_classes": 2, "train_size": 15}
    module = ConvACModule("ht", {"in_shape": dm.layout["in_shape"], "leaf": {"name": "categorical", "num_values": 3},
                                 "num_components": 2, "channels": 3, "num_classes": 2})
    dm.check_fits(module.model)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with torch.no_grad():
        for stage, run in (("val", trainer.validate), ("test", trainer.test)):
            x, y = dm.split(stage)
            assert torch.isnan(x).any()
            exact = brute_force(module.model.log_prob, x, 3)
            logged = run(module, datamodule=dm, verbose=False)[0][f"{stage}/nll"]
            assert logged == pytest.approx(-exact.mean().item(), rel=1e-5)
            joint = torch.stack([brute_force(lambda v, k=k: module.model.log_joint(v)[:, k], x, 3)
                                 for k in range(2)], 1)  # log P(x_obs, y) for each class
            assert torch.allclose(module.model.log_joint(x), joint, atol=1e-5)


def test_missing_entries_of_integer_arrays_are_marginalized_by_the_model(tmp_path):
    x = np.random.default_rng(1).integers(0, 2, (12, 2, 2)).astype(float)
    x[0, 0, 1] = x[0, 1, 0] = x[3, 1, 1] = np.nan
    np.save(tmp_path / "m.npy", x)
    dm = create_datamodule("array", path=str(tmp_path / "m.npy"), test_fraction=0.0, val_fraction=0.0)
    model = create_model("ht", in_shape=dm.layout["in_shape"], leaf="bernoulli", num_components=2, channels=2)
    served = dm.split("train")[0]
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(served), brute_force(model.log_prob, served, 2))


# ------------------------------------------------------------------ the layout read from data
@pytest.fixture
def hydra_ctx():
    with initialize_config_module("convac.configs", version_base="1.3"):
        yield


def built_from_config(*overrides: str):
    """``(cfg, datamodule, model)`` as ``convac-train`` builds them (``setup_data`` first)."""
    cfg = compose("train", overrides=["output_dir=/tmp/convac-test", *overrides])
    schema.to_object(cfg)
    datamodule = setup_data(cfg)
    kwargs = schema.to_kwargs(cfg.model)
    return cfg, datamodule, create_model(kwargs.pop("name"), **kwargs)


@pytest.mark.skipif(not (SHARED_DATA / "debd").is_dir(), reason="no ../shared/data/debd")
def test_debd_set_builds_with_no_in_shape(hydra_ctx):
    cfg, datamodule, model = built_from_config("experiment=debd_ht", f"data.root={SHARED_DATA / 'debd'}",
                                               "data.dataset=plants")
    assert model.in_shape == datamodule.in_shape == (1, 1, 69) and list(cfg.data.in_shape) == [1, 1, 69]
    datamodule.check_fits(model)


@pytest.mark.skipif(not (SHARED_DATA / "mnist-t10k").is_dir(), reason="no ../shared/data/mnist-t10k")
def test_mnist_builds_with_no_in_shape(hydra_ctx):
    cfg, datamodule, model = built_from_config("data=mnist", f"data.root={SHARED_DATA / 'mnist-t10k'}",
                                               "data.split=t10k", "model=ht_classifier", "model.channels=2",
                                               "model.num_components=2")
    assert model.in_shape == (1, 28, 28) and model.num_classes == 10 and model.leaf_spec.num_values == 256
    datamodule.check_fits(model)


def test_own_data_fills_shape_values_and_classes(hydra_ctx, tmp_path):
    write_image_folder(tmp_path / "img", {"a": 3, "b": 3, "c": 2})
    cfg, datamodule, model = built_from_config("data=image_folder", f"data.root={tmp_path / 'img'}", "data.num_values=8",
                                               "model=ht_classifier", "model.channels=2", "model.num_components=2")
    assert (model.in_shape, model.num_classes, model.leaf_spec.num_values) == ((3, 6, 5), 3, 8)
    assert cfg.data.num_classes == 3 and cfg.model.num_classes == 3  # the interpolation sees the value read


def test_a_zoo_experiment_must_pin_its_shape():
    from convac.zoo.entries import _architecture_json

    with pytest.raises(ValueError, match="experiment=debd_ht leaves data.in_shape to be read from the data"):
        _architecture_json("debd_ht")


# ------------------------------------------------------------------------ through the CLI
def run_cli(tmp_path: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    where = f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun else f"hydra.run.dir={tmp_path / 'run'}"
    return subprocess.run([sys.executable, "-m", "convac.cli.train", *(["-m"] if multirun else []), where, *overrides],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)


def epochs_logged(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/nll")]


def test_cli_trains_an_array_file_two_epochs(tmp_path):
    x = np.random.default_rng(0).integers(0, 4, (120, 6, 6)).astype(float)
    x[np.random.default_rng(1).random(x.shape) < 0.1] = np.nan  # 10% missing
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(120) % 3)
    result = run_cli(tmp_path, *TINY, "data=array", f"data.path={tmp_path / 'data.npz'}", "model=ht_classifier",
                     "data.batch_size=32", "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert epochs_logged(run) == [0, 1] and (run / "entropy.csv").is_file()
    config = (run / "config.yaml").read_text()
    assert "in_shape:\n  - 1\n  - 6\n  - 6" in config and "num_classes: 3" in config and "num_values: 4" in config
    # convac-eval rebuilds the data from the checkpoint; NaN entries and the random mask both marginalized
    with initialize_config_module("convac.configs", version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"output_dir={tmp_path / 'eval'}",
                                         "trainer.enable_progress_bar=false"])
    metrics = evaluate(cfg)
    assert np.isfinite(metrics["test/nll"]) and 0.0 <= metrics["test/acc_missing"] <= 1.0


def test_cli_trains_an_rgb_image_folder_two_epochs(tmp_path):
    write_image_folder(tmp_path / "images", {"red": 20, "blue": 20}, size=(8, 8))
    result = run_cli(tmp_path, *TINY, "data=image_folder", f"data.root={tmp_path / 'images'}", "data.num_values=16",
                     "data.batch_size=16", "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert epochs_logged(run) == [0, 1]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model_kwargs"]["in_shape"] == [3, 8, 8]
    assert ckpt["datamodule_hyper_parameters"]["in_shape"] == [3, 8, 8]  # convac-eval rebuilds the data from it


def test_cli_bad_image_folder_is_one_line_and_writes_nothing(tmp_path, cli_error):
    write_image_folder(tmp_path / "images", {"a": 2})
    write_image_folder(tmp_path / "images", {"b": 2}, size=(3, 3))
    result = cli_error("train", tmp_path / "run", *TINY, "data=image_folder", f"data.root={tmp_path / 'images'}")
    assert_user_error(result, "train", ["images of mixed sizes", "set data.size=[H, W]"])
    assert_no_run_files(tmp_path / "run")


def test_cli_cfg_job_and_multirun_with_the_shape_read_from_data(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 2, (40, 4)))
    data = ["data=array", f"data.path={tmp_path / 'x.npy'}", "model/leaf=bernoulli"]
    shown = subprocess.run([sys.executable, "-m", "convac.cli.train", *data, "--cfg", "job"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert shown.returncode == 0 and "in_shape: ${data.in_shape}" in shown.stdout and "in_shape: null" in shown.stdout
    result = run_cli(tmp_path, *data, "threads=1", "model.num_components=2", "callbacks=model_checkpoint",
                     "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "test=false", "model.channels=2,3",
                     multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, channels in ((0, 2), (1, 3)):
        config = (tmp_path / "sweep" / str(job) / "config.yaml").read_text()
        assert "in_shape:\n  - 1\n  - 1\n  - 4" in config and f"channels: {channels}" in config
