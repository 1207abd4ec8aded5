"""benchmarks/profile_step.py accounts for a training step's time and FLOPs (issue 6)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import profile_step  # noqa: E402

CPU = torch.device("cpu")


def test_self_training_profile_splits_the_step_into_ops():
    r = profile_step.profile_phase(2, "selftrain", 1, CPU, shape=(4, 48, 48), width=4, batch_labeled=2,
                                   batch_unlabeled=2, patch_size=(32, 32), slice_size=(32, 32), amp=False)
    assert 0 < r["conv_gflop"] <= r["gflop"]
    assert 0 < r["conv_ms"] < r["profiled_ms"]
    assert any("convolution_backward" in op for op in r["ops_ms"])  # the student's backward pass was profiled
    shares = list(r["ops_ms"].values())
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) - r["profiled_ms"]) < 1e-6


def test_layer_ops_time_every_op_in_both_layouts():
    out = profile_step.layer_ops(2, CPU, amp=False, repeats=1)
    assert list(out) == ["contiguous", "channels-last"]
    for ops in out.values():
        assert list(ops) == ["conv 3x3", "InstanceNorm", "LeakyReLU", "max-pool 2"]
        assert all(ms > 0 for ms in ops.values())


def test_batching_times_one_batch_and_two_halves():
    seconds = profile_step.batching(3, CPU, amp=False, repeats=1)
    assert list(seconds) == ["one batch", "two halves"] and all(s > 0 for s in seconds.values())
