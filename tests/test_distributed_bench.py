"""nnlab.distributed_bench: it runs (one process, a few steps; no timing is asserted), and
its all-reduce cost is the slope and the one-float time it says."""

import pytest

from nnlab import distributed_bench


def test_one_process_measures_and_reports_without_collectives(capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert distributed_bench.main(["--model", "mlp", "--steps", "3"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("mlp, 1 process(es), 1 thread(s) each, batch 32 per process: ")
    assert "0.0% of it in collectives (gradients 0.194 MB)" in line  # 64*256+256 + 256*128+128 + 128*10+10 floats


def test_all_reduce_cost_is_the_slope_between_the_largest_sizes_and_the_one_float_time():
    one_float = distributed_bench.ALL_REDUCE_MEGABYTES[0]
    seconds = {one_float: 0.0005, 0.25: 0.002, 1: 0.004, 4: 0.010, 16: 0.040}
    per_megabyte, fixed = distributed_bench.all_reduce_cost(seconds)
    assert per_megabyte == pytest.approx((0.040 - 0.010) / 12)
    assert fixed == 0.0005
