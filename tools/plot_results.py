#!/usr/bin/env python3
"""Draw a results table (CSV: task, data, label, successes, episodes; '#' lines are comments)
as bars of closed-loop success with Wilson 95 % intervals, one row of bars per task.

    python tools/plot_results.py docs/results/stride4.csv docs/images/claim_stride4.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qt_ros.evaluation.intervals import wilson_interval  # noqa: E402

COLORS = {"mix": "tab:blue", "clean": "tab:orange", "first round": "tab:gray",
          "loop": "tab:red", "control": "tab:green"}


def read_rows(path: Path) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    for r in rows:
        r["successes"], r["episodes"] = int(r["successes"]), int(r["episodes"])
        if not 0 <= r["successes"] <= r["episodes"]:
            raise ValueError(f"{path}: {r['label']}: {r['successes']}/{r['episodes']}")
    return rows


def tick(row: dict) -> str:
    return f"{row['data']}: {row['label']}"


def plot(rows: list[dict], out: Path, title: str) -> Path:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    width = max(sum(r["task"] == t for r in rows) for t in tasks)
    # rotated tick labels take ~0.085 in per character below each axis
    label = max(len(tick(r)) for r in rows)
    fig, axes = plt.subplots(len(tasks), 1,
                             figsize=(0.62 * width + 2, (2.2 + 0.085 * label) * len(tasks)),
                             squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        part = [r for r in rows if r["task"] == task]
        rates = [r["successes"] / r["episodes"] for r in part]
        low, high = zip(*(wilson_interval(r["successes"], r["episodes"]) for r in part),
                        strict=True)
        ax.bar(range(len(part)), rates, color=[COLORS.get(r["data"], "tab:green") for r in part],
               yerr=[[p - lo for p, lo in zip(rates, low, strict=True)],
                     [hi - p for p, hi in zip(rates, high, strict=True)]], capsize=3)
        for k, r in enumerate(part):
            ax.text(k, high[k] + 0.02, f"{r['successes']}", ha="center", fontsize=7)
        ax.set_xticks(range(len(part)), [tick(r) for r in part],
                      rotation=60, ha="right", fontsize=7)
        ax.set_xlim(-0.6, width - 0.4)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel(f"{task}: success")
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--title", default="stem stride 4, tiny, batch 32, lr 1e-3, 64x64: "
                        "success on 100 unseen seeds with Wilson 95 % intervals "
                        "(blue: the mix, orange: clean demonstrations; 16k steps unless named)")
    args = parser.parse_args()
    print(plot(read_rows(args.table), args.png, args.title))


if __name__ == "__main__":
    main()
