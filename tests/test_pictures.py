"""Pictures of what a model does: samples.png and inpaint.png from the Pictures
callback and from ``convac-plot --samples``; the rows hold what they say they hold."""
from __future__ import annotations

import logging

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from convac import Bernoulli, Categorical, Gaussian, HTConvAC
from convac.callbacks import Pictures
from convac.cli.plot import main as plot_main
from convac.data import DigitsDataModule, create_datamodule
from convac.pictures import (
    GAP, LABEL_WIDTH, MISSING_COLOR, NUM_COLUMNS, NUM_ORIGINALS, TITLE_HEIGHT, cell_scale, inpaint_rows, masks,
    pick_images, sample_rows, to_rgb, write_pictures,
)
from convac.training import ConvACModule


def png_size(path) -> tuple[int, int]:
    """(width, height) of a file that decodes as PNG."""
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.mode == "RGB"
        return image.size


def expected_size(rows: int, cols: int, h: int, w: int) -> tuple[int, int]:
    """The size :mod:`convac.pictures` promises: label column, cells enlarged by an integer, gaps."""
    s = cell_scale(h, w)
    return LABEL_WIDTH + cols * (w * s + GAP) + GAP, TITLE_HEIGHT + rows * (h * s + GAP) + GAP


def test_cell_scale_keeps_pixels_whole():
    assert cell_scale(8, 8) == 7 and cell_scale(28, 28) == 2 and cell_scale(16, 12) == 3 and cell_scale(200, 10) == 1


@pytest.mark.parametrize("num_classes,sample_rows_", [(10, 10), (1, 6)])
def test_pictures_decode_as_png_of_the_expected_size(tmp_path, num_classes, sample_rows_):
    model = HTConvAC((1, 8, 8), Categorical(17), num_components=3, channels=4, num_classes=num_classes)
    x, y = DigitsDataModule().split("test")
    samples, inpaint = write_pictures(model, tmp_path, pick_images(x, y), name="tiny")
    assert png_size(samples) == expected_size(sample_rows_, NUM_COLUMNS, 8, 8)
    assert png_size(inpaint) == expected_size(1 + 3 * 3, NUM_ORIGINALS, 8, 8)  # originals, then 3 masks x 3 rows


def test_rgb_and_non_square_images(tmp_path):
    model = HTConvAC((3, 6, 10), Categorical(4), num_components=2, channels=2)
    samples, inpaint = write_pictures(model, tmp_path, None)  # originals: the model's own samples
    assert png_size(samples) == expected_size(6, NUM_COLUMNS, 6, 10)
    assert png_size(inpaint) == expected_size(10, NUM_ORIGINALS, 6, 10)


def test_sample_rows_are_one_class_each():
    model = HTConvAC((1, 4, 4), Bernoulli(), num_components=2, channels=3, num_classes=3)
    rows = sample_rows(model, num_columns=5, seed=4)
    assert [r.label for r in rows] == ["class 0", "class 1", "class 2"]
    generator = torch.Generator().manual_seed(4)
    for c, row in enumerate(rows):  # the same draws as sample(n, y=c) from one seeded generator
        assert torch.equal(row.images, model.sample(5, y=c, generator=generator))


def test_inpaint_rows_keep_the_observed_pixels_and_follow_the_masks():
    model = HTConvAC((1, 8, 8), Categorical(17), num_components=3, channels=4, num_classes=10)
    x = DigitsDataModule().split("test")[0][:4]
    rows = inpaint_rows(model, x, seed=1)
    assert [r.label.strip() for r in rows] == ["original"] + ["bottom half", "sample", "MPE",
                                                             "50% i.i.d.", "sample", "MPE",
                                                             "centre square", "sample", "MPE"]
    for i in (1, 4, 7):
        masked, sampled, mpe = rows[i:i + 3]
        assert torch.equal(masked.images, x) and masked.missing.any()
        for completed in (sampled, mpe):
            assert torch.equal(completed.images[~masked.missing], x[~masked.missing])
        assert torch.equal(mpe.images, model.inpaint(x, masked.missing, mode="mpe"))


def test_masks_have_their_shares():
    x = torch.zeros(200, 1, 8, 6)
    found = masks(x, torch.Generator().manual_seed(0))
    assert found["bottom half"][:, :, 4:].all() and not found["bottom half"][:, :, :4].any()
    assert found["centre square"].double().mean() == pytest.approx(4 * 3 / 48)
    assert found["50% i.i.d."].double().mean() == pytest.approx(0.5, abs=4 * 0.5 / np.sqrt(x.numel()))


def test_to_rgb_scales_values_and_paints_missing_pixels():
    x = torch.tensor([[[[0.0, 2.0], [4.0, float("nan")]]]])  # (1, 1, 2, 2), one NaN
    missing = torch.tensor([[[[False, True], [False, False]]]])
    rgb = to_rgb(x, missing, low=0.0, high=4.0)
    assert rgb.shape == (1, 2, 2, 3) and rgb.dtype == np.uint8
    red = (np.array(MISSING_COLOR) * 255).round()
    np.testing.assert_array_equal(rgb[0, 0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1, 0], [255, 255, 255])
    np.testing.assert_array_equal(rgb[0, 0, 1], red)  # masked
    np.testing.assert_array_equal(rgb[0, 1, 1], red)  # NaN
    colour = to_rgb(torch.tensor([[[[1.0]], [[0.0]], [[0.5]]]]), None, 0.0, 1.0)  # 3 channels: RGB
    np.testing.assert_array_equal(colour[0, 0, 0], [255, 0, 128])


def test_gaussian_leaves_draw(tmp_path):
    model = HTConvAC((1, 4, 4), Gaussian(), num_components=2, channels=2)
    assert all(p.stat().st_size > 0 for p in write_pictures(model, tmp_path, torch.rand(3, 1, 4, 4)))


def test_pick_images_takes_one_of_each_class_first():
    x = torch.arange(6).view(6, 1, 1, 1)
    y = torch.tensor([2, 2, 0, 1, 0, 1])
    assert pick_images(x, y, 5).flatten().tolist() == [2, 3, 0, 1, 4]


# ------------------------------------------------------------------------------ the callback
def fit(tmp_path, model_kwargs, datamodule):
    module = ConvACModule(model_name="ht", model_kwargs=model_kwargs)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[Pictures()])
    trainer.fit(module, datamodule=datamodule)


def test_callback_writes_both_pictures_at_the_end_of_fitting(tmp_path):
    fit(tmp_path, dict(in_shape=[1, 8, 8], leaf={"name": "categorical", "num_values": 17}, num_components=3,
                       channels=4, num_classes=10), DigitsDataModule(batch_size=64))
    assert png_size(tmp_path / "samples.png") == expected_size(10, NUM_COLUMNS, 8, 8)
    assert png_size(tmp_path / "inpaint.png") == expected_size(10, NUM_ORIGINALS, 8, 8)


def test_callback_skips_sequences_and_says_so(tmp_path, caplog):
    datamodule = create_datamodule("synthetic", in_shape=[1, 1, 8], num_values=2, num_classes=1, num_components=2,
                                   channels=2, sharpness=1.0, num_train=64, num_val=16, num_test=16)
    with caplog.at_level(logging.INFO):
        fit(tmp_path, dict(in_shape=[1, 1, 8], leaf={"name": "bernoulli"}, num_components=2, channels=2), datamodule)
    assert not list(tmp_path.glob("*.png"))
    assert "not images" in caplog.text and "[1, 1, 8]" in caplog.text


# --------------------------------------------------------------------------- convac-plot
def test_plot_samples_of_a_zoo_entry(tmp_path, capsys):
    plot_main(["--samples", "ht_digits_classifier", "--out", str(tmp_path)])
    assert capsys.readouterr().out.split() == [str(tmp_path / "samples.png"), str(tmp_path / "inpaint.png")]
    assert png_size(tmp_path / "samples.png") == expected_size(10, NUM_COLUMNS, 8, 8)  # one row per class


def test_plot_samples_puts_data_root_where_the_entry_reads_its_data(tmp_path, capsys):
    """``--data-root`` fills the card's local data key; an entry on bundled data ignores it, and
    an entry on a local folder without it completes its own samples."""
    plot_main(["--samples", "ht_digits", "--data-root", str(tmp_path / "unused"), "--out", str(tmp_path)])
    assert capsys.readouterr().out.split() == [str(tmp_path / "samples.png"), str(tmp_path / "inpaint.png")]
    plot_main(["--samples", "ht_mnist_classifier", "--out", str(tmp_path)])
    assert "no test images for ht_mnist_classifier (pass --data-root DIR)" in capsys.readouterr().out


def test_plot_samples_refuses_a_model_of_sequences(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_main(["--samples", "ht_nltcs", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "ht_nltcs takes sequences of shape [1, 1, 16], not images" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
