"""scripts/results.py's sampled DEBD set (the data of ``recipe-time``): the format our DEBD
reader takes, the requested size, binary values, and the same files for the same seed."""
from __future__ import annotations

import pytest

from convac.data import create_datamodule


def test_sampled_debd_set_reads_as_debd(results, tmp_path):
    results.write_sampled_debd(tmp_path / "a", "sampled", rows=60, variables=12, seed=3)
    datamodule = create_datamodule("debd", root=str(tmp_path / "a"), dataset="sampled")
    datamodule.setup()
    assert tuple(datamodule.in_shape) == (1, 1, 12)
    sizes = {split: len(datamodule.split(split)[0]) for split in ("train", "val", "test")}
    assert sizes == {"train": 60, "val": 6, "test": 12}
    x = datamodule.split("train")[0]
    assert set(x.unique().tolist()) == {0, 1}  # both values occur: not a constant column block

    results.write_sampled_debd(tmp_path / "b", "sampled", rows=60, variables=12, seed=3)
    for split in ("train", "valid", "test"):
        assert (tmp_path / "a" / f"sampled.{split}.data").read_text() == (tmp_path / "b" / f"sampled.{split}.data").read_text()


def test_sampled_debd_set_rejects_bad_sizes(results, tmp_path):
    with pytest.raises(ValueError, match="variables must be in 1..163"):
        results.write_sampled_debd(tmp_path, "sampled", rows=10, variables=200, seed=0)
    with pytest.raises(ValueError, match="rows must be at least 10"):
        results.write_sampled_debd(tmp_path, "sampled", rows=9, variables=5, seed=0)
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_refused_precision_is_a_row_and_the_next_run_goes_on(results, tmp_path, capfd):
    """``convac-train`` refuses ``16-true`` before training; the precision table records the exit
    code instead of stopping (the GPU check runs every precision in one stage)."""
    rows = results.run_precision(tmp_path / "runs", tmp_path / "no-data", ["16-true", "bf16-true"], ["trainer.max_epochs=1"])
    assert [(r["run"], r["precision"]) for r in rows] == [("digits default", "16-true"), ("digits default", "bf16-true")]
    assert all(r["exit_code"] != 0 and "test_nll" not in r for r in rows)
    assert rows[0]["command"].endswith("trainer.max_epochs=1")
    table = results.markdown_precision(rows)
    assert table.count("failed (exit") == 2
    err = capfd.readouterr().err
    assert "skipping MNIST t10k" in err and "use trainer.precision=bf16-mixed" in err


def test_the_precision_table_compares_each_run_with_its_first_precision_that_trained(results):
    rows = [{"run": "a", "precision": "16-mixed", "exit_code": 1},
            {"run": "a", "precision": "32-true", "test_nll": 100.0, "epochs": 5, "seconds_per_epoch": 2.0},
            {"run": "a", "precision": "bf16-mixed", "test_nll": 101.0, "epochs": 5, "seconds_per_epoch": 2.5}]
    lines = results.markdown_precision(rows).splitlines()[2:]
    assert lines == ["| a | 16-mixed | failed (exit 1) | | | |", "| a | 32-true | 100.000 | +0.00% | 5 | 2.00 |",
                     "| a | bf16-mixed | 101.000 | +1.00% | 5 | 2.50 |"]
