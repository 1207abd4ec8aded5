"""benchmarks/accuracy.py runs unchanged on any folder of the ../shared/data layout (issue 4)."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import accuracy  # noqa: E402


@pytest.fixture
def dataset(tmp_path):
    """A tiny folder in the ACDC layout: images/, labels/, splits.json with train, labeled_2, val."""
    names = [f"case{i}" for i in range(5)]
    return write_dataset(tmp_path, names, train=names[:4], labeled_2=names[:2], val=names[4:])


def test_cvbm_arm_at_cpu_scale_in_3d_is_planned(dataset, tmp_path):
    out = tmp_path / "out"
    code = accuracy.main([str(dataset), "--labeled", "2", "--arm", "cvbm", "--dim", "3", "--out", str(out),
                          "--set", "width=4", "--set", "pretrain_iterations=2", "--set", "selftrain_iterations=2",
                          "--set", "patch_size=16,16,32", "--set", "validate_every=1"])
    assert code == 0
    report = json.loads((out / "summary.json").read_text())
    assert report["config"]["patch_size"] == [16, 16, 32]  # --set wins over the plan
    assert report["config"]["spacing"] == [1.0, 1.0, 1.0] and "patches 16×16×32" in report["plan"]
    assert set(report["results"]) == {"cvbm fg", "cvbm mix", "cvbm avg", "cvbm bg", "supervised (its teacher) fg"}
    rows = list(csv.DictReader((out / "cvbm_fg.csv").open()))
    # scored on the original 24x40x40 grid of the one val case, with the four metrics
    assert [r["case"] for r in rows] == ["case4"]
    assert {"dice", "jaccard", "hd95", "asd"} <= {k.lower() for k in rows[0]}


def test_splits_declare_la_holdout_and_selection(tmp_path):
    train = [f"c{i:02d}" for i in range(30)]
    (tmp_path / "splits.json").write_text(json.dumps({"train": train, "labeled_4": train[:4]}))
    split = accuracy.splits_of(tmp_path, 4)
    assert split["holdout"] == train[-16:] and split["selection"] == train[-20:-16]
    assert split["unlabeled"] == train[4:-20]
    assert not set(split["unlabeled"]) & (set(split["holdout"]) | set(split["selection"]) | set(split["labeled"]))


def test_all_labeled_takes_every_training_case_outside_holdout_and_selection(tmp_path):
    train = [f"c{i:02d}" for i in range(30)]
    (tmp_path / "splits.json").write_text(json.dumps({"train": train, "labeled_4": train[:4]}))
    split = accuracy.splits_of(tmp_path, "all")
    assert split["labeled"] == train[:-20] and split["unlabeled"] == []
    (tmp_path / "splits.json").write_text(json.dumps({"train": train, "val": ["v0"]}))
    assert accuracy.splits_of(tmp_path, "all", eval_split="val")["labeled"] == train  # ACDC: val selects


def test_la_holdout_trains_as_unlabeled_when_another_split_is_scored(tmp_path):
    train = [f"c{i:02d}" for i in range(30)]
    (tmp_path / "splits.json").write_text(json.dumps({"train": train, "labeled_4": train[:4], "test": ["t0"]}))
    split = accuracy.splits_of(tmp_path, 4, eval_split="test")
    assert split["unlabeled"] == train[4:-20] + train[-16:] and split["test"] == ["t0"]
    assert not set(split["unlabeled"]) & (set(split["selection"]) | set(split["labeled"]))


def test_labeled_budget_follows_the_protocol_without_a_labeled_list():
    splits = {"train": ["p2_f1", "p1_f1", "p2_f2", "p1_f2", "p3_f1"], "labeled_patient_order": ["p2", "p1", "p3"]}
    assert accuracy.labeled_cases(splits, 1) == ["p2_f1", "p2_f2"]  # both frames of the first patient
    assert accuracy.labeled_cases({**splits, "labeled_1": ["p3_f1"]}, 1) == ["p3_f1"]
    assert accuracy.labeled_cases({"train": ["a", "b", "c"]}, 2) == ["a", "b"]


def test_sparse_slices_trains_on_the_corrected_slices_only(tmp_path):
    import sparse_slices

    names = [f"c{i:02d}" for i in range(22)]
    write_dataset(tmp_path, names, train=names)
    label = np.zeros((24, 4, 4), np.uint8)
    label[6:18] = 1
    assert sparse_slices.evenly_spread(label, 3).tolist() == [9, 12, 14]  # inside slices 6..17
    out = tmp_path / "out"
    assert sparse_slices.main([str(tmp_path), "--volumes", "1", "--slices", "3", "--out", str(out),
                               "--set", "width=4", "--set", "pretrain_iterations=2",
                               "--set", "selftrain_iterations=2", "--set", "patch_size=16,16,32"]) == 0
    report = json.loads((out / "summary.json").read_text())
    assert report["volumes"] == ["c00"] and 0 <= report["student"] <= 1 and "patches 16×16×32" in report["plan"]


def test_scores_are_taken_with_the_models_post_processing(monkeypatch):
    """A model whose config keeps the largest component is scored as cvbm predict segments with it."""
    from types import SimpleNamespace

    from napari_cvbm.core.config import preset
    from napari_cvbm.core.data import Case

    truth = np.zeros((1, 8, 16), np.uint8)
    truth[0, 2:6, 2:6] = 1
    fg = np.stack([1.0 - truth, truth.astype(float)]).astype(np.float32)
    fg[:, 0, 0, 12:16] = [[0.0], [1.0]]  # a stray island of class 1, far from the truth
    monkeypatch.setattr(accuracy, "Predictor", lambda model, config: (
        lambda image, **options: SimpleNamespace(fg=fg, bg=fg, mix=fg)))
    case = Case("c", np.zeros((1, 8, 16), np.float32), truth)
    scores = {}
    for keep in (False, True):
        config = preset("cpu", 3, largest_component=keep)
        result = accuracy.evaluate(None, [case], config, ("fg", "bg"))
        scores[keep] = {view: rows[0]["dice"] for view, rows in result.items()}
    assert scores[True]["fg"] == scores[True]["bg"] == pytest.approx(1.0)
    assert scores[False]["fg"] < 0.9
