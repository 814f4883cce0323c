"""Smoke test of scripts/bench.py: every section runs at tiny sizes and the JSON has its keys.

No timing assertions: the numbers of a dry run mean nothing.
"""
from __future__ import annotations

import json

import torch



def test_sections_at_dry_run_sizes(bench):
    settings, device = bench.DRY_RUN, torch.device("cpu")
    timings = bench.bench_kernels(settings, device)
    assert sorted((r["operation"], r["K"], r["size_class"]) for r in timings) == sorted(
        [(op, k, c) for op in ("shift", "spread") for k in settings.kernel_channels for c in settings.kernel_classes]
        + [(op, None, c) for op in ("exp", "log_add") for c in settings.kernel_classes])
    for row in timings:
        assert row["chosen"] in row["ms"] and all(ms > 0 for ms in row["ms"].values()) and row["values"] == 4 ** row["size_class"]

    blocks = bench.bench_blocks(settings, device)
    assert [r["case"] for r in blocks] == [f"sum layer K={k}" for k in settings.sum_channels] + [
        f"{case[0]} {kind}" for case in settings.train_cases for kind in ("training step", "likelihood")]
    assert all(r[f"{name}_ms"] > 0 for r in blocks for name in ("blocks", "half", "double", "one_block"))

    rows = bench.bench_sum_layer(settings, device)
    assert [r["K"] for r in rows] == list(settings.sum_channels)
    for row in rows:
        assert {"K", "ours_ms", "naive_ms", "speedup", "gflops", "peak_gflops", "efficiency"} <= set(row)
        assert row["speedup"] > 0 and row["efficiency"] > 0

    train, structure = bench.bench_train(settings, device)
    assert [r["dataset"] for r in train] == [case[0] for case in settings.train_cases]
    for row in train:
        assert {"dataset", "ours_img_s", "cirkit_img_s", "ratio"} <= set(row) and row["ours_img_s"] > 0
        if row["cirkit_img_s"] is not None:  # libcirkit installed: the same structure, same size
            assert row["cirkit_params"] == row["ours_params"]
    assert structure["ours"]

    probe = bench.bench_probe(settings, device)
    assert probe is None or ({"share", "se_rel"} <= set(probe) and 0 < probe["share"] < 1)

    point = bench.scaling_point(settings.scaling_sizes[0], settings, device)
    assert {"size", "img_s", "peak_mb"} <= set(point) and point["img_s"] > 0


def test_main_writes_every_top_level_key(bench, tmp_path):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--dry-run", "--only", "sum_layer", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert {"machine", "sum_layer", "train", "probe", "scaling"} <= set(result)
    assert result["machine"]["threads"] == 1 and result["machine"]["device"] == "cpu"
    assert len(result["sum_layer"]) == len(bench.DRY_RUN.sum_channels) and result["scaling"] is None


def test_summary_prints_every_speed_target(bench):
    """One line per target with the measured values: the probe's share and SE, every training
    ratio, the sum layer's efficiency at each K, compile and the largest scaling point."""
    results = {
        "probe": {"share": 0.041, "se_rel": 0.0031},
        "train": [{"dataset": "28x28", "ratio": 2.5}, {"dataset": "digits", "ratio": 2.1}, {"dataset": "64x64", "ratio": None}],
        "sum_layer": [{"K": 16, "efficiency": 0.36}, {"K": 64, "efficiency": 0.55}],
        "compile": [{"dataset": "digits", "speedup": 0.9}],
        "scaling": [{"size": "128x128", "img_s": 20.0, "peak_mb": 3000.0, "per_example_mb": 12.5}],
    }
    text = "\n".join(bench.summary(results))
    for part in ("4.1%", "0.31%", "default-run", "28x28 2.50x", "digits 2.10x", "K=16 36%", "K=64 55%", "x0.90", "128x128", "12.50 MB"):
        assert part in text
    assert "64x64" not in text  # no libcirkit number, no ratio
    assert bench.summary({"probe": None, "train": None, "sum_layer": None, "compile": None, "scaling": None}) == []


def test_train_settings_can_be_overridden(bench):
    args = bench.parse_args(["--dry-run", "--train-channels", "8", "--train-batch", "4", "--only", "train", "compile"])
    assert args.train_channels == 8 and args.train_batch == 4 and args.only == ["train", "compile"]


def test_interleaved_rounds_alternate_their_order_on_request(bench):
    calls = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    bench.interleaved_min(contenders, repeats=3, warmup=1, device=torch.device("cpu"), alternate=True)
    assert "".join(calls) == "abc" + "abc" + "cba" + "abc"
    calls.clear()
    bench.interleaved_min(contenders, repeats=2, warmup=0, device=torch.device("cpu"))
    assert "".join(calls) == "abcabc"
