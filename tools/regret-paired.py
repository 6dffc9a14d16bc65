#!/usr/bin/env python3
"""Paired comparison of two optimizers of a `qtune bench --out DIR` folder.

    tools/regret-paired.py DIR A B [--fractions 0.1,0.5,1] [--seeds 0,1,...] [--dir-b DIR2]

Reads DIR/trajectories/<optimizer>/<dataset>-seed<k>.csv (written by qtune
bench) and, for every (dataset, seed) both optimizers ran, the normalized
regret at each fraction of the budget: the regret of the last point at or
before that time, or (y_best - 0) / (y_best - y_worst) before the first point
(the incumbent is 0 until an epoch ends, as in qtune bench). Prints the mean
paired difference A - B with its 95% half-width (1.96 sd / sqrt(n)) and how
often A is lower, equal and higher. --dir-b takes B's runs from another bench
folder (e.g. the same optimizer with another model encoding). Standard library
only.
"""
import argparse
import math
import os
import re


def read(path):
    points, footer = [], {}
    with open(path) as f:
        for line in f:
            if line.startswith("# qtune bench trajectory"):
                footer = dict(kv.split("=", 1) for kv in line.split()[4:] if "=" in kv)
            elif line[0].isdigit():
                cols = line.split(",")
                points.append((float(cols[0]), float(cols[3])))
    return points, footer


def regret_at(points, footer, t):
    best, worst = float(footer["y_best"]), float(footer["y_worst"])
    value = best / (best - worst) if best > worst else 1.0
    for time_s, regret in points:
        if time_s > t:
            break
        value = regret
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--fractions", default="0.1,0.5,1")
    ap.add_argument("--seeds", help="only these seeds (comma-separated); default all")
    ap.add_argument("--dir-b", help="bench folder of B (default DIR)")
    args = ap.parse_args()
    fractions = [float(x) for x in args.fractions.split(",")]
    root = os.path.join(args.dir, "trajectories")
    root_b = os.path.join(args.dir_b or args.dir, "trajectories")
    runs = sorted(set(os.listdir(os.path.join(root, args.a))) &
                  set(os.listdir(os.path.join(root_b, args.b))))
    runs = [r for r in runs if re.match(r".+-seed\d+\.csv$", r)]
    if args.seeds:
        keep = set(args.seeds.split(","))
        runs = [r for r in runs if re.search(r"-seed(\d+)\.csv$", r).group(1) in keep]
    diffs = {f: [] for f in fractions}
    for name in runs:
        pa, fa = read(os.path.join(root, args.a, name))
        pb, fb = read(os.path.join(root_b, args.b, name))
        budget = float(fa["budget_s"])
        for f in fractions:
            diffs[f].append(regret_at(pa, fa, f * budget) - regret_at(pb, fb, f * budget))
    print(f"{args.a} - {args.b}: normalized regret, paired over {len(runs)} (dataset, seed) runs")
    print("fraction  mean diff  95% half-width  A lower  equal  A higher")
    for f in fractions:
        d = diffs[f]
        n = len(d)
        mean = sum(d) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
        lower = sum(x < 0 for x in d)
        equal = sum(x == 0 for x in d)
        print(f"{f:8.2f}  {mean:+9.4f}  {1.96 * sd / math.sqrt(n):14.4f}  {lower:7d}  {equal:5d}"
              f"  {n - lower - equal:8d}")


if __name__ == "__main__":
    main()
