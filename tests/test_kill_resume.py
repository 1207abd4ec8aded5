"""SIGKILL at random moments never leaves a broken checkpoint, and `--resume` always continues."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
from test_cli import make_folder

from napari_cvbm.core.checkpoint import load_checkpoint, load_model

SETTINGS = ["--set", "width=4", "--set", "patch_size=32,32,32", "--set", "pretrain_iterations=10",
            "--set", "selftrain_iterations=10", "--set", "checkpoint_every=1"]


def _start(data, out, resume):
    args = [sys.executable, "-m", "napari_cvbm.cli", "train", "--images", data / "images",
            "--labels", data / "labels", "--out", out]
    args += ["--resume", out / "last.pt"] if resume else SETTINGS
    return subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_repeated_sigkill_and_resume(tmp_path):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    kills, lost, progress = 0, 0, []
    for _ in range(4):
        last = out / "last.pt"
        written_before = last.stat().st_mtime_ns if last.exists() else 0
        proc = _start(data, out, resume=last.exists())
        while proc.poll() is None and (not last.exists() or last.stat().st_mtime_ns == written_before):
            time.sleep(0.02)  # wait until this run is inside its training loop (it wrote a checkpoint)
        time.sleep(float(rng.uniform(0.0, 1.0)))  # then kill at a random moment, often mid-write
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        if (out / "last.pt").exists():
            try:
                payload = load_checkpoint(out / "last.pt")
                progress.append((payload["phase"], payload["iteration"]))
            except Exception:  # a broken checkpoint is exactly what must never happen
                lost += 1
    final = _start(data, out, resume=(out / "last.pt").exists())
    _, err = final.communicate(timeout=300)
    print(f"SIGKILLs: {kills}, checkpoints lost: {lost}, checkpoint after each kill: {progress}")
    assert kills >= 3 and lost == 0
    assert final.returncode == 0, err
    assert load_checkpoint(out / "last.pt")["phase"] == "done"
    load_model(out / "model.pt")
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # killed writes cleaned up
