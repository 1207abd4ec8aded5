"""`torchrun` with 2 CPU processes (gloo): ranks stay identical; the checkpoint loads anywhere."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from napari_cvbm.core import distributed
from napari_cvbm.core.checkpoint import load_model
from napari_cvbm.core.inference import predict
from napari_cvbm.core.io import read_image
from napari_cvbm.demo import sample_data_dir


@pytest.mark.parametrize("norm", ["instance", "batch"])  # batch: running statistics must agree too
def test_torchrun_two_cpu_ranks(tmp_path, norm):
    data = sample_data_dir()
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "napari_cvbm.cli", "train", "--images", data / "labeled" / "images",
           "--labels", data / "labeled" / "labels", "--unlabeled", data / "unlabeled" / "images",
           "--val-images", data / "test" / "images", "--val-labels", data / "test" / "labels",
           "--out", out, "--device", "cpu", "--set", "width=4", "--set", "patch_size=32,32,32",
           "--set", "pretrain_iterations=2", "--set", "selftrain_iterations=2", "--set", "validate_every=2",
           "--set", f"norm={norm}"]
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "distributed: 2 processes" in result.stdout
    assert "ranks hold identical student and teacher weights: yes" in result.stdout
    assert result.stdout.count("saved ") == 1  # only rank 0 writes
    model, config = load_model(out / "model.pt")  # the single-process CLI and napari read it
    assert config.width == 4 and config.norm == norm
    image = read_image(data / "test" / "images" / "case_013.nii.gz")
    pred = predict(model, image.array, patch_size=config.patch_size)
    assert pred.labels.shape == image.array.shape
    assert not any(torch.isnan(p).any() for p in model.state_dict().values() if p.is_floating_point())


def _share_flag(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:  # each rank would choose differently; all must take rank 0's choice
        flag = distributed.broadcast_flag(rank == 1, torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    (out_dir / f"rank{rank}").write_text(str(flag))


def test_ranks_share_rank_zeros_layout_decision(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_share_flag, args=(port, tmp_path), nprocs=2)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["False", "False"]
