"""Markdown rows of the accuracy results written by benchmarks/accuracy.py (its summary.json files).

    python benchmarks/results_table.py runs/acdc3_cvbm/summary.json runs/acdc3_fgssl/summary.json
"""

import json
import sys
from pathlib import Path

ROW_NAMES = {
    "supervised fg": "supervised only", "supervised (its teacher) fg": "supervised only (CVBM run's teacher)",
    "fg_ssl fg": "fg-only SSL", "cvbm fg": "CVBM fg", "cvbm mix": "CVBM mix", "cvbm avg": "CVBM avg",
    "cvbm bg": "CVBM bg view alone",
}


def rows(path: Path):
    report = json.loads(path.read_text())
    minutes = report["train_seconds"] / 60
    for key, summary in report["results"].items():
        m = summary["mean"]
        yield (f"| {ROW_NAMES.get(key, key)} | {100 * m['dice']:.2f} | {100 * m['jaccard']:.2f} | "
               f"{m['hd95']:.2f} | {m['asd']:.2f} | {report['arm']} run, {minutes:.1f} min |")


def main(paths) -> int:
    print("| model | DSC | Jaccard | 95HD (vox) | ASD (vox) | from |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        for row in rows(Path(path)):
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
