"""benchmarks/annotation_loop.py: a simulated annotator replays rounds of Segment, pick, correct, Fine-tune."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
from conftest import write_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import annotation_loop  # noqa: E402

TINY = ["--set", "width=4", "--set", "pretrain_iterations=2", "--set", "selftrain_iterations=2",
        "--set", "patch_size=16,16,32", "--set", "validate_every=1"]


def test_even_picks_fill_the_largest_gaps_inside_the_structure():
    label = np.zeros((24, 4, 4), np.uint8)
    label[6:18] = 1
    assert annotation_loop.pick_even(label, [], 3) == [11, 8, 14]  # the middle first, then the halves
    assert annotation_loop.pick_even(label, [8, 11, 14], 2) == [16, 6]  # 16 is 2 from 14 and from the end
    rng = np.random.default_rng(0)
    picked = annotation_loop.pick_random(label, [8, 11], 5, rng)
    assert len(set(picked)) == 5 and all(6 <= z <= 17 and z not in (8, 11) for z in picked)
    assert annotation_loop.shares(8, 3) == [3, 3, 2]


def test_rounds_replay_each_strategy(tmp_path):
    names = [f"c{i:02d}" for i in range(22)]  # LA layout: the last 16 are the hold-out, 4 before them selection
    write_dataset(tmp_path / "data", names, train=names)
    out = tmp_path / "out"
    assert annotation_loop.main([str(tmp_path / "data"), "--volumes", "1", "--rounds", "2", "--per-round", "4",
                                 "--out", str(out), *TINY]) == 0
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [(r["strategy"], r["round"], r["slices"]) for r in rows] == [
        (s, str(k), str(4 * k)) for s in annotation_loop.STRATEGIES for k in (1, 2)]
    first = [r for r in rows if r["round"] == "1"]
    assert len({(r["picked"], r["dice"]) for r in first}) == 1  # from scratch: one shared, evenly spread round
    assert all(0 <= float(r["dice"]) <= 100 for r in rows) and {r["steps"] for r in rows} == {"2+2"}  # --set wins
    label = np.asarray(annotation_loop.cases(tmp_path / "data", ["c00"])[0].label)
    inside = set(annotation_loop.structure_range(label).tolist())
    for strategy in annotation_loop.STRATEGIES:
        one, two = ([int(z) for z in r["picked"].split(":")[1].split(",")] for r in rows if r["strategy"] == strategy)
        assert len(set(one + two)) == 8  # never the same slice twice
        if strategy != "guided":
            assert set(two) <= inside
    # every round held out one of its corrected slices and was judged on it
    assert all(r["held_out_after"] not in ("", "None") for r in rows)
    assert (out / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["final"]) == set(annotation_loop.STRATEGIES) and summary["eval_volumes"] == 16


def test_rounds_from_the_bundled_model_are_guided_from_the_first(tmp_path):
    names = [f"c{i:02d}" for i in range(22)]
    write_dataset(tmp_path / "data", names, train=names)
    out = tmp_path / "out"
    assert annotation_loop.main([str(tmp_path / "data"), "--volumes", "1", "--rounds", "1", "--per-round", "4",
                                 "--start", "starter", "--strategies", "guided,even", "--out", str(out),
                                 *TINY]) == 0
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    start = [r for r in rows if r["round"] == "0"]  # the starting model, scored before any correction
    rows = [r for r in rows if r["round"] != "0"]
    assert [(r["round"], r["slices"]) for r in start] == [("0", "0")] * 2 and start[0]["dice"] == start[1]["dice"]
    assert [r["strategy"] for r in rows] == ["guided", "even"] and rows[0]["picked"] != rows[1]["picked"]


def test_drift_checks_the_volumes_nobody_corrected_along_the_run(tmp_path, capsys):
    """benchmarks/finetune_drift.py: the annotator corrects the first "val" volumes, the run is held out
    and planned as the Fine-tune widget's, and checks the fg head on the other "val" volumes and on the
    slices of the corrected ones that were not corrected."""
    import finetune_drift

    names = [f"c{i:02d}" for i in range(8)]
    write_dataset(tmp_path / "data", names, train=names[:4], val=names[4:])
    settings = ["--set", "pretrain_iterations=1", "--set", "selftrain_iterations=2", "--set", "patch_size=16,16,32"]
    assert finetune_drift.main([str(tmp_path / "data"), "--start", str(annotation_loop.STARTER), "--volumes", "2",
                                "--slices", "8", "--every", "1", *settings]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("pretrain_iterations=1 selftrain_iterations=2")
    points = line.split("|")[1].split()
    assert [p.split(":")[0] for p in points] == ["start", "pre1", "sel1", "sel2"]
    scores = [[float(v) for v in p.split(":")[1].split("/")] for p in points]
    assert all(len(pair) == 2 and all(0 <= v <= 100 for v in pair) for pair in scores)
