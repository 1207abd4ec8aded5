"""Outputs never destroy what the user has: inputs, earlier results, earlier runs, a live writer's files.

Write failures (read-only folder, full disk) are simulated by making the write raise OSError with
that errno (the suite runs as root, so permissions cannot make a folder read-only); "a file where
the output folder should be" is real.
"""

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_volume
from test_cli import TINY, make_folder

from napari_cvbm import cli
from napari_cvbm.core.checkpoint import build_model, load_model, save_checkpoint, save_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.io import read_image, write_image

CONFIG = preset("cpu", 3, width=4, patch_size=(32, 32, 32))
SHAPE = (16, 24, 24)
HOLD_FOLDER = ("import sys, time\nfrom napari_cvbm.core.outputs import run_folder\n"
               "with run_folder(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)\n")


def run_cli(capsys, *args):
    """`cvbm ARGS` in this process (so that writes can be made to fail): exit code, stderr lines."""
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


def assert_refused(capsys, args, *fragments):
    """Exit 2 with one `cvbm: error:` line (besides progress bars) holding every fragment."""
    code, err = run_cli(capsys, *args)
    said = [line for line in err if line.startswith("cvbm")]
    assert code == 2 and len(said) == 1 and said[0].startswith("cvbm: error: "), err
    assert "Traceback" not in "".join(err)
    for fragment in fragments:
        assert str(fragment) in said[0], said[0]


def snapshot(folder):
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def fail_with(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


@pytest.fixture
def model(tmp_path):
    return save_model(tmp_path / "model.pt", build_model(CONFIG), CONFIG)


@pytest.fixture
def scans(tmp_path):
    for i in range(2):
        write_image(tmp_path / "scans" / f"c{i}.nii.gz", blob_volume(i, SHAPE)[0])
    return tmp_path / "scans"


@pytest.fixture
def run(tmp_path):
    """`cvbm train` arguments for a tiny run writing to tmp_path/run."""
    data = make_folder(tmp_path / "data")
    return ["train", "--images", data / "images", "--labels", data / "labels", "--out", tmp_path / "run", *TINY]


# -- predict --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink"])
def test_predict_never_replaces_an_input(tmp_path, capsys, model, scans, spelling):
    out = {"same": scans, "dotdot": scans / ".." / "scans", "symlink": tmp_path / "link"}[spelling]
    if spelling == "symlink":
        out.symlink_to(scans, target_is_directory=True)
    before = snapshot(scans)
    for source in (scans, scans / "c0.nii.gz"):
        for overwrite in ([], ["--overwrite"]):
            assert_refused(capsys, ["predict", model, source, "--out", out, *overwrite], "c0.nii.gz", "input")
    assert snapshot(scans) == before  # no input replaced, no probe file left


@pytest.mark.parametrize("names, fmt", [(("case.nii", "case.nii.gz"), []), (("a.tif", "a.tiff"), []),
                                        (("a.nii", "a.tif"), ["--format", ".nii.gz"])])
def test_predict_refuses_two_inputs_with_one_case_name(tmp_path, capsys, model, names, fmt):
    for name in names:
        write_image(tmp_path / "in" / name, blob_volume(0, SHAPE)[0])
    assert_refused(capsys, ["predict", model, tmp_path / "in", "--out", tmp_path / "out", *fmt], *names)
    assert not (tmp_path / "out").exists()


def test_predict_plans_every_output_before_writing_and_keeps_existing_ones(tmp_path, capsys, model, scans):
    out = tmp_path / "preds"
    old = write_image(out / "maps" / "c1_prob_fg.nii.gz", np.zeros((2, 2, 2), np.float32))  # the last map planned
    before = snapshot(out)
    assert_refused(capsys, ["predict", model, scans, "--out", out, "--probabilities"], old, "--overwrite")
    assert snapshot(out) == before  # not even c0's label map was written
    code, _ = run_cli(capsys, "predict", model, scans, "--out", out, "--probabilities", "--overwrite")
    assert code == 0 and read_image(old).array.shape == SHAPE
    assert read_image(out / "c0.nii.gz").array.shape == SHAPE  # named <case><ext>: evaluate pairs by case


def test_a_file_where_the_output_folder_should_be(tmp_path, capsys, model, scans):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    missing = tmp_path / "missing"  # data are read only after the output folder was checked
    for out in (blocker, blocker / "sub"):
        assert_refused(capsys, ["predict", model, scans, "--out", out], out)
        assert_refused(capsys, ["train", "--images", missing, "--labels", missing, "--out", out], out)
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_failed_image_write_keeps_the_previous_file(tmp_path, capsys, monkeypatch, model, scans, code):
    out = tmp_path / "preds"
    assert run_cli(capsys, "predict", model, scans, "--out", out)[0] == 0
    before = snapshot(out)
    monkeypatch.setattr(os, "replace", fail_with(code))
    assert_refused(capsys, ["predict", model, scans, "--out", out, "--overwrite"], out / "c0.nii.gz", os.strerror(code))
    assert snapshot(out) == before  # previous label maps intact, no temp file left


# -- checkpoints and train --------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_failed_checkpoint_write_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch, code):
    path = save_model(tmp_path / "m.pt", build_model(CONFIG), CONFIG)
    before = path.read_bytes()
    for target in (torch, os):
        with monkeypatch.context() as patch:
            patch.setattr(target, "save" if target is torch else "replace", fail_with(code))
            with pytest.raises(CVBMInputError, match=f"{path}.*{os.strerror(code)}"):
                save_model(path, build_model(CONFIG), CONFIG)
        assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_stale_temp_files_of_dead_writers_go_and_a_live_writers_stay(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        for pid in (dead, live.pid):
            (tmp_path / f".m.pt.{pid}.tmp").write_bytes(b"half a checkpoint")
        save_checkpoint(tmp_path / "m.pt", {"config": CONFIG.to_dict(), "model": {}})
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".m.pt.{live.pid}.tmp", "m.pt"]
    finally:
        live.kill()
        live.wait()


def test_train_refuses_a_folder_holding_a_run(tmp_path, capsys, run):
    out = tmp_path / "run"
    assert run_cli(capsys, *run)[0] == 0
    before = snapshot(out)
    assert_refused(capsys, run, out, "--resume", "--overwrite")
    elsewhere = tmp_path / "other" / "last.pt"  # another run's checkpoint does not continue this one
    elsewhere.parent.mkdir()
    elsewhere.write_bytes((out / "last.pt").read_bytes())
    assert_refused(capsys, [*run, "--resume", elsewhere], out, "--overwrite")
    assert snapshot(out) == before
    assert run_cli(capsys, *run, "--resume", out / "last.pt")[0] == 0
    model_inode = (out / "model.pt").stat().st_ino
    assert run_cli(capsys, *run, "--overwrite")[0] == 0
    assert (out / "model.pt").stat().st_ino != model_inode  # replaced, as asked
    load_model(out / "model.pt")


def test_one_run_per_folder_and_the_lock_dies_with_its_process(tmp_path, capsys, run):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_refused(capsys, run, out, "another")
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the OS drops the lock
        holder.wait()
    assert run_cli(capsys, *run)[0] == 0
    load_model(out / "model.pt")


def test_failed_checkpoint_write_in_training_is_one_line_and_keeps_the_run(tmp_path, capsys, monkeypatch, run):
    out = tmp_path / "run"
    assert run_cli(capsys, *run)[0] == 0
    before = snapshot(out)
    monkeypatch.setattr(torch, "save", fail_with(errno.ENOSPC))
    assert_refused(capsys, [*run, "--overwrite"], out / "last.pt", "No space left on device")
    assert snapshot(out) == before
