"""Write the small synthetic 3D sample set shipped in napari_cvbm/sample_data/ (deterministic).

The data come from :mod:`napari_cvbm.synthetic` (numpy and scipy.ndimage only); this script writes
them with napari_cvbm's io into the package folder (``synthetic.SAMPLE_DATA``, so the wheel carries
them) and reports how hard each case is for a global Otsu threshold.

    python sample_data/generate.py          # (re)write the files in napari_cvbm/sample_data/
    python sample_data/generate.py --check  # regenerate in memory and compare with the files
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
try:
    from napari_cvbm import synthetic
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(HERE.parent))
    from napari_cvbm import synthetic
from napari_cvbm.core.io import read_image, read_labels, write_image  # noqa: E402 (after the path fallback)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (numpy only): maximise the between-class variance of a histogram."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)[:-1]
    w1 = hist.sum() - w0
    m0 = np.cumsum(hist * centres)[:-1] / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)[:-1]) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def _paths(out: Path, split: str, case: str):
    return out / split / "images" / f"{case}.nii.gz", out / split / "labels" / f"{case}.nii.gz"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=synthetic.SAMPLE_DATA,
                        help="output folder (default: the package's napari_cvbm/sample_data/)")
    parser.add_argument("--check", action="store_true", help="compare with existing files, write nothing")
    args = parser.parse_args(argv)

    mismatches, scores = 0, []
    for split, case, image, label in synthetic.generate_all():
        image_path, label_path = _paths(args.out, split, case)
        if args.check:
            same = np.array_equal(read_image(image_path).array, image)
            if label is not None:
                same &= np.array_equal(read_labels(label_path).array, label)
            mismatches += not same
            print(f"{split:9s} {case}: {'identical' if same else 'DIFFERENT'}")
            continue
        write_image(image_path, image, spacing=synthetic.SPACING)
        if label is not None:
            write_image(label_path, label, spacing=synthetic.SPACING)
        line = f"{split:9s} {case}: wrote {image_path.relative_to(args.out)}"
        if label is not None:
            scores.append(dice(image > otsu_threshold(image), label))
            line += f" + label ({int(label.sum())} organ voxels, Otsu-threshold Dice {scores[-1]:.3f})"
        print(line)
    if scores:
        print(f"mean Otsu-threshold Dice over labeled cases: {np.mean(scores):.3f}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
