#!/usr/bin/env python3
"""Median of the divan medians over several runs of `cargo bench --bench check`.

    usage: check_summary.py RESULT_FILE...   (the check_run*.txt files)

Prints one key=value line per case, in the order divan printed them:
    case=check/no_tasks/wal runs=3 median_us=4.195 medians_us="4.17 4.195 4.3"
"""
import re
import statistics
import sys

UNITS = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


def parse(path):
    out = {}
    stack = []
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^((?:│  |   )*)[├╰]─ (.*)$", line.rstrip("\n"))
        if not m:
            continue
        depth = len(m.group(1)) // 3
        rest = m.group(2).split("│")
        name = re.split(r"\s{2,}", rest[0].strip())[0]
        del stack[depth:]
        stack.append(name)
        if len(rest) >= 3 and rest[2].strip():
            val, unit = rest[2].split()
            out["/".join(stack)] = float(val) * UNITS[unit]
    return out


def main():
    runs = [parse(p) for p in sys.argv[1:]]
    order = []
    for r in runs:
        for k in r:
            if k not in order:
                order.append(k)
    for k in order:
        vals = [r[k] for r in runs if k in r]
        med = statistics.median(vals)
        shown = " ".join(f"{v:.4g}" for v in vals)
        print(f'case={k} runs={len(vals)} median_us={med:.4g} medians_us="{shown}"')


if __name__ == "__main__":
    main()
