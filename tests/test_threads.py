"""The CPU thread policy (core/threads.py): who decides, how the cores are shared, and that
`cvbm train` / `cvbm predict` really compute with the count chosen."""

import subprocess
import sys
import threading
import time

import pytest
import torch
from test_cli import TINY, make_folder

from napari_cvbm import cli
from napari_cvbm.core import threads
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.predictor import Predictor
from napari_cvbm.core.training import TrainingRun

HAS_PROC_STAT = threads.CpuClock.now() is not None


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No thread variables from the caller; torch's count restored after each test (it is process-wide)."""
    for name in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cores(monkeypatch):
    """Pretend the machine has ``n`` usable cores."""
    def set_cores(n):
        monkeypatch.setattr(threads, "usable_cores", lambda *args: n)
    return set_cores


def test_explicit_flag_wins_over_environment_and_load(monkeypatch, cores):
    cores(8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.training_threads(False, threads=5, busy=7.0) == 5
    assert threads.training_threads(True, threads=8, busy=0.0) == 8  # the GUI share does not override it


def test_environment_wins_over_the_policy(monkeypatch, cores):
    cores(8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.training_threads(False, busy=6.0) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # OpenMP's list per nesting level: the first counts
    assert threads.training_threads(False, busy=0.0) == 2


@pytest.mark.parametrize("value", ["", "0", "-2", "four"])
def test_unusable_environment_is_ignored(monkeypatch, cores, value):
    cores(4)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert threads.training_threads(False, busy=0.0) == 4


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_flag_is_refused(bad):
    with pytest.raises(CVBMInputError, match="--threads"):
        threads.training_threads(False, threads=bad)


def test_gui_share_leaves_a_core_for_napari(cores):
    cores(8)
    assert threads.training_threads(True, busy=0.0) == 7
    assert threads.training_threads(False, busy=0.0) == 8
    cores(2)
    assert threads.training_threads(True, busy=0.0) == 1
    cores(1)
    assert threads.training_threads(True, busy=0.0) == 1  # never below one


@pytest.mark.parametrize("busy, expected", [(0.0, 8), (0.4, 8), (0.6, 7), (2.5, 5), (3.4, 5), (7.6, 1), (40.0, 1)])
def test_cores_busy_elsewhere_are_left_to_them(cores, busy, expected):
    cores(8)
    assert threads.training_threads(False, busy=busy) == expected


def test_busy_is_measured_when_not_given(monkeypatch, cores):
    cores(4)
    monkeypatch.setattr(threads, "busy_cores", lambda *args: 2.0)
    assert threads.training_threads(False) == 2
    assert threads.training_threads(True) == 1


def test_torchrun_ranks_split_the_cores(monkeypatch, cores):
    cores(8)
    monkeypatch.setattr(threads, "busy_cores", lambda *args: pytest.fail("ranks must not count each other as load"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torchrun sets for every rank when the user did not
    assert threads.training_threads(False) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert threads.training_threads(False) == 2  # 8 // 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert threads.training_threads(False) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a count the user set
    assert threads.training_threads(False) == 3
    assert threads.training_threads(False, threads=1) == 1


def test_outside_torchrun_omp_one_is_the_users(monkeypatch, cores):
    cores(8)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.training_threads(False, busy=0.0) == 1


def test_usable_cores_follow_affinity_and_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    quota = tmp_path / "cpu.max"
    assert threads.usable_cores(quota) == 4  # no cgroup file
    quota.write_text("max 100000\n")
    assert threads.usable_cores(quota) == 4
    quota.write_text("150000 100000\n")
    assert threads.usable_cores(quota) == 2
    quota.write_text("800000 100000\n")
    assert threads.usable_cores(quota) == 4


@pytest.mark.skipif(not HAS_PROC_STAT, reason="needs /proc/stat")
def test_busy_cores_sees_another_process_and_not_this_one():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_cores(0.5) > 0.6
    finally:
        spin.kill()
        spin.wait()
    start = threads.CpuClock.now()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        pass  # this process keeps one core busy
    stop = threads.CpuClock.now()
    own = (stop.own - start.own) / (stop.wall - start.wall)
    assert own > 0.5
    assert stop.others_since(start) < (stop.busy - start.busy) / (stop.wall - start.wall) - 0.5


def test_use_applies_the_count_and_tolerates_interop_already_set():
    assert threads.use_training_threads(False, threads=1) == 1
    assert torch.get_num_threads() == 1
    assert threads.use_training_threads(False, threads=2) == 2  # interop threads can only be set once
    assert torch.get_num_threads() == 2


def _seen_counts(events):
    seen = []
    for _ in events:
        seen.append(torch.get_num_threads())
    return seen


def test_adapt_follows_the_load_and_restores_the_count(monkeypatch, cores):
    if not HAS_PROC_STAT:
        pytest.skip("needs /proc/stat")
    cores(2)
    torch.set_num_threads(2)
    loads = iter([0.0, 1.0, 1.0, 0.2, 0.0])  # the first decision, then one after each step
    monkeypatch.setattr(threads, "busy_cores", lambda *args: next(loads))
    monkeypatch.setattr(threads.CpuClock, "others_since", lambda self, earlier: next(loads))
    assert _seen_counts(threads.adapt_threads(range(4), background=False, every_s=0.0)) == [2, 1, 1, 2]
    assert torch.get_num_threads() == 2  # as before the run


def test_adapt_keeps_an_explicit_count(monkeypatch, cores):
    cores(2)
    monkeypatch.setattr(threads.CpuClock, "others_since", lambda self, earlier: 2.0)
    assert _seen_counts(threads.adapt_threads(range(3), background=False, threads=2, every_s=0.0)) == [2, 2, 2]


def test_adapt_closes_the_run_it_wraps():
    closed = []

    def run():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    inner = run()  # held here, so only an explicit close (not garbage collection) ends it
    events = threads.adapt_threads(inner, background=False, threads=1)
    next(events)
    events.close()
    assert closed == [True]


def test_adapt_applies_the_count_in_the_thread_that_trains():
    """torch keeps a count per thread once it has computed: the worker's own count must change."""
    torch.set_num_threads(2)
    seen = []

    def worker():
        torch.ones(1000, 1000).sum()  # this thread has computed with the process's count
        seen.extend(_seen_counts(threads.adapt_threads(range(2), background=True, threads=1)))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [1, 1]


def _record_step_threads(monkeypatch, seen):
    for name in ("_pretrain_step", "_student_step"):
        step = getattr(TrainingRun, name)

        def recorded(self, batch, step=step):
            seen.append(torch.get_num_threads())
            return step(self, batch)
        monkeypatch.setattr(TrainingRun, name, recorded)


def test_cli_trains_and_predicts_with_the_given_threads(tmp_path, monkeypatch, capsys):
    data = make_folder(tmp_path / "data")
    seen = []
    _record_step_threads(monkeypatch, seen)
    torch.set_num_threads(2)  # what the run would keep if --threads were ignored
    assert cli.main(["train", "--images", str(data / "images"), "--labels", str(data / "labels"),
                     "--out", str(tmp_path / "run"), "--threads", "1", *TINY]) == 0
    assert "CPU threads: 1 (--threads)" in capsys.readouterr().out
    assert seen == [1] * 4  # every pre-training and self-training step

    predicted = []
    call = Predictor.__call__
    monkeypatch.setattr(Predictor, "__call__",
                        lambda self, *a, **k: predicted.append(torch.get_num_threads()) or call(self, *a, **k))
    torch.set_num_threads(2)
    assert cli.main(["predict", str(tmp_path / "run" / "model.pt"), str(data / "images"),
                     "--out", str(tmp_path / "preds"), "--threads", "1"]) == 0
    assert predicted == [1, 1]


def test_cli_without_the_flag_uses_the_policy(tmp_path, monkeypatch, capsys, cores):
    data = make_folder(tmp_path / "data", n=1)
    seen = []
    _record_step_threads(monkeypatch, seen)
    cores(2)
    monkeypatch.setattr(threads, "busy_cores", lambda *args: 1.0)  # another process holds one of two cores
    monkeypatch.setattr(threads.CpuClock, "others_since", lambda self, earlier: 1.0)  # and keeps it
    torch.set_num_threads(2)
    assert cli.main(["train", "--images", str(data / "images"), "--labels", str(data / "labels"),
                     "--out", str(tmp_path / "run"), *TINY]) == 0
    assert "CPU threads: 1 (free cores)" in capsys.readouterr().out
    assert seen == [1] * 4


def test_cli_refuses_zero_threads(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=1)
    assert cli.main(["train", "--images", str(data / "images"), "--labels", str(data / "labels"),
                     "--out", str(tmp_path / "run"), "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cvbm: error: --threads must be")
