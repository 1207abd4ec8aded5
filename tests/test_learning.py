"""A short CPU training on the bundled sample data really learns (held-out Dice)."""

from napari_cvbm.core.config import preset
from napari_cvbm.core.data import load_cases
from napari_cvbm.core.training import TrainingRun
from napari_cvbm.demo import evaluate_outputs, sample_data_dir


def test_short_training_lifts_held_out_dice_far_above_untrained():
    folder = sample_data_dir()
    labeled = load_cases(folder / "labeled" / "images", folder / "labeled" / "labels")
    unlabeled = load_cases(folder / "unlabeled" / "images")[:4]
    test = load_cases(folder / "test" / "images", folder / "test" / "labels")
    config = preset("cpu", 3, pretrain_iterations=20, selftrain_iterations=10)  # the cpu preset, 30 steps
    run = TrainingRun(config, labeled, unlabeled)
    untrained = evaluate_outputs(run.final_model(), test, config)["dice"]
    events = list(run.events())
    assert events[-1].phase == "selftrain" and events[-1].iteration == 10
    trained = evaluate_outputs(run.final_model(), test, config)["dice"]
    print("untrained", untrained, "trained", trained)
    assert untrained["fg"] < 0.4
    for view in ("fg", "mix", "avg", "bg"):
        assert trained[view] > 0.65, (view, trained)
        assert trained[view] - untrained[view] > 0.35, (view, trained, untrained)
