"""How well ``core.look_alike`` tells frames of one scan from different scans, on a folder of
volumes whose names say which belong together (ACDC: ``patient085_frame01``, ``patient085_frame02``).

    python benchmarks/look_alike.py DATA/acdc              # scans named <scan>_frame<NN>
    python benchmarks/look_alike.py DATA/la --scan '(.*)'  # every file its own scan

Reads the images through the project's reader, compares every pair of one shape, spacing and channel
count, and prints the thumbnail correlations of pairs of one scan and of two scans, the pairs on the
wrong side of ``THRESHOLD`` and the groups ``look_alike_groups`` makes of all of them.
"""

import argparse
import itertools
import re
import sys
from pathlib import Path

import numpy as np

from napari_cvbm.core.data import load_cases
from napari_cvbm.core.look_alike import THRESHOLD, comparable, correlation, look_alike_groups, thumbnail


def _range(values) -> str:
    if not values:
        return "no pair"
    return f"{len(values)} pairs, {min(values):.2f} to {max(values):.2f} (median {np.median(values):.2f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder holding images/")
    parser.add_argument("--scan", default=r"(.*)_frame\d+",
                        help="regular expression whose first group names the scan of a case")
    args = parser.parse_args(argv)
    cases = load_cases(args.data / "images")
    scans = [re.fullmatch(args.scan, case.name).group(1) for case in cases]
    thumbnails = [thumbnail(case) for case in cases]
    same, different, wrong = [], [], []
    for i, j in itertools.combinations(range(len(cases)), 2):
        if not comparable(cases[i], cases[j]):
            continue
        r = correlation(thumbnails[i], thumbnails[j])
        one_scan = scans[i] == scans[j]
        (same if one_scan else different).append(r)
        if one_scan != (r >= THRESHOLD):
            wrong.append(f"{cases[i].name} / {cases[j].name}: {r:.2f}")
    print(f"{len(cases)} volumes of {len(set(scans))} scans; threshold {THRESHOLD}")
    print(f"one scan:   {_range(same)}")
    print(f"two scans:  {_range(different)}; the highest under the threshold "
          f"{max((r for r in different if r < THRESHOLD), default=float('nan')):.2f}")
    print("on the wrong side of the threshold:", "; ".join(wrong) or "none")
    groups = [g for g in look_alike_groups(cases) if len(g) > 1]
    mixed = [g for g in groups if len({scans[i] for i in g}) > 1]
    print(f"groups of look-alikes: {len(groups)}, of more than one scan: "
          + ("; ".join(", ".join(cases[i].name for i in g) for g in mixed) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
