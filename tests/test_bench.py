"""The benchmark runs end to end on tiny sizes and prints ratios (no timing assertions)."""

import re

import torch

from nnlab import bench


def test_bench_runs_on_tiny_sizes(capsys):
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--tiny", "--repeats", "1", "--warmup", "0", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "Conv2d" in printed and "MaxPool2d" in printed and "train step" in printed
    assert re.search(r"geometric mean\s+\d+\.\d\d", printed)
    rows = [line for line in printed.splitlines() if re.search(r"\d+\.\d{3}\s+\d+\.\d{3}\s+\d+\.\d\d$", line)]
    assert len(rows) == len(bench.build_cases(tiny=True)) + len(bench.build_graph_cases(tiny=True))
    assert "graph Model and as a Sequential" in printed and "Sequential ms" in printed


def test_format_table_geometric_mean():
    table = bench.format_table([("a", 2.0, 1.0), ("b", 0.5, 1.0)])
    assert table.splitlines()[-1].split()[-1] == "1.00"
