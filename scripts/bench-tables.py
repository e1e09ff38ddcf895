#!/usr/bin/env python3
"""Markdown tables from criterion's saved estimates (the figures in docs/BENCHMARKS.md).

    python3 scripts/bench-tables.py [CRITERION_DIR] [GROUP_PREFIX ...]

CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion (or target/criterion). One table per
benchmark group: a row per function id, a column per parameter (the value after the last
"/" of the id), each cell criterion's
estimate of the time per iteration (the regression slope, or the mean) with its 95% interval, and, when the
group declared a throughput, elements per second at the mean. Groups whose parameters are
thread counts ("contention", "llist", "kva/threads") also get the ratio of each column's throughput to the
first column's.
"""

import json
import os
import sys
from collections import OrderedDict


def fmt_time(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def fmt_rate(per_s):
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f} k/s"
    return f"{per_s:.0f}/s"


def load(root):
    groups = OrderedDict()
    for dirpath, _dirs, files in sorted(os.walk(root)):
        if not dirpath.endswith(os.sep + "new") or "benchmark.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        # Criterion prints the slope of its linear regression when it sampled linearly
        # (`iter_custom`, `iter`), else the mean: use the same figure.
        mean = est.get("slope") or est["mean"]
        ci = mean["confidence_interval"]
        elems = (meta.get("throughput") or {}).get("Elements")
        fid = meta["function_id"] or meta["group_id"]
        param = meta.get("value_str") or ""
        if param and param_key(param)[0] == 1:
            # "fixed/kva": the parameter names the contender (a row), the function the
            # pattern (a column).
            fid, param = param, fid
        row = groups.setdefault(meta["group_id"], OrderedDict()).setdefault(fid, {})
        row[param] = (mean["point_estimate"], ci["lower_bound"], ci["upper_bound"], elems)
    return groups


def param_key(p):
    try:
        return (0, float(p), p)
    except ValueError:
        return (1, 0.0, p)


def table(name, rows):
    params = sorted({p for r in rows.values() for p in r}, key=param_key)
    threads = name.startswith(("contention", "llist", "kva/threads"))
    out = [f"### {name}", ""]
    head = ["", *params]
    if threads and len(params) > 1:
        head += [f"{p} / {params[0]}" for p in params[1:]]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for fid, cells in rows.items():
        line = [fid]
        rates = {}
        for p in params:
            if p not in cells:
                line.append("")
                continue
            mean, lo, hi, elems = cells[p]
            cell = f"{fmt_time(mean)} [{fmt_time(lo)}, {fmt_time(hi)}]"
            if elems:
                rates[p] = elems * 1e9 / mean
                cell += f"; {fmt_rate(rates[p])}"
            line.append(cell)
        if threads and len(params) > 1:
            base = rates.get(params[0])
            for p in params[1:]:
                line.append(f"{rates[p] / base:.2f}x" if base and p in rates else "")
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out) + "\n"


def main():
    args = sys.argv[1:]
    if args and os.path.isdir(args[0]):
        root = args.pop(0)
    else:
        root = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
    if not os.path.isdir(root):
        sys.exit(f"bench-tables: no criterion directory at {root} (run cargo bench first)")
    groups = load(root)
    for name, rows in groups.items():
        if args and not any(name.startswith(p) for p in args):
            continue
        print(table(name, rows))


if __name__ == "__main__":
    main()
