"""Train the bundled starter model (napari_cvbm/models/starter.pt) on the sample data.

    python scripts/train_starter.py            # about 4 minutes on a 2-core CPU

The `cpu` preset at width 6, stored in float16, keeps the file small (~3.5 MB).
"""

import sys
from pathlib import Path

import torch

from napari_cvbm.console import train_with_progress
from napari_cvbm.core.checkpoint import save_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.training import TrainingRun
from napari_cvbm.demo import evaluate_outputs, load_sample_cases, sample_data_dir

OUT = Path(__file__).resolve().parent.parent / "napari_cvbm" / "models" / "starter.pt"


def main() -> int:
    labeled, unlabeled, test = load_sample_cases(sample_data_dir())
    config = preset("cpu", 3, width=6)
    run = TrainingRun(config, labeled, unlabeled)
    train_with_progress(run)
    model = run.final_model()
    dice = evaluate_outputs(model, test, config)["dice"]
    save_model(OUT, model, config, dtype=torch.float16, phase="starter", test_dice=dice["fg"])
    print(f"saved {OUT}: held-out Dice " + ", ".join(f"{k} {100 * v:.1f}" for k, v in dice.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
