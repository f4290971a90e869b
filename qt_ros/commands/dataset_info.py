"""``qt-ros dataset info DATASET``: what a converted dataset holds, in words and in a plot.

Prints episodes, steps, outcomes, sources, instructions, dropped steps, sizes on disk and action
statistics; writes a PNG (default ``DATASET/info.png``) with the histograms of episode lengths,
episode returns and per-step MC returns, and the distribution of action bins of every dimension.
``--json`` prints the same summary as one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from qt_ros.data.dataset_format import DatasetError
from qt_ros.data.dataset_reader import DatasetStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="dataset directory")
    parser.add_argument("--plot", metavar="PNG", help="plot file (default: DATASET/info.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the plot")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        store = DatasetStore(args.dataset)
        info = summarize(store)
    except DatasetError as exc:
        print(f"qt-ros dataset info: {exc}", file=sys.stderr)
        return 2
    if not args.no_plot:
        path = Path(args.plot) if args.plot else store.root / "info.png"
        try:
            plot(store, path)
            info["plot"] = str(path)
        except (DatasetError, OSError) as exc:
            print(f"qt-ros dataset info: could not write the plot: {exc}", file=sys.stderr)
    print(json.dumps(info, indent=1) if args.json else text(info))
    return 0


def summarize(store: DatasetStore) -> dict[str, Any]:
    """Counts and sizes of a dataset (plain types, JSON-ready)."""
    eps = store.episodes
    lengths = [int(e["length"]) for e in eps]
    per_instruction = Counter(int(e["instruction"]) for e in eps)
    dropped: Counter[str] = Counter()
    for e in eps:
        dropped.update(e.get("dropped", {}))
    sizes: dict[str, int] = {}
    shards = store.root / "shards"
    for f in shards.glob("*/*.bin") if shards.exists() else []:
        sizes[f.stem] = sizes.get(f.stem, 0) + f.stat().st_size
    stats = store.stats()
    tok = store.tokenizer_config
    return {
        "dataset": str(store.root),
        "episodes": len(eps),
        "steps": sum(lengths),
        "mean_length": float(np.mean(lengths)) if lengths else 0.0,
        "outcomes": dict(Counter(e.get("outcome", "unknown") for e in eps)),
        "sources": dict(Counter(e.get("source", "autonomous") for e in eps)),
        "incomplete_episodes": sum(bool(e.get("incomplete")) for e in eps),
        "dropped_steps": dict(dropped),
        "instructions": [{"text": store.instructions[i], "episodes": n}
                         for i, n in per_instruction.most_common()],
        "image_size": list(store.image_size),
        "state_dim": store.state_dim,
        "action_dims": list(tok["names"]),
        "gamma": store.gamma,
        "shards": len({e["shard"] for e in eps}),
        "bytes": sum(sizes.values()),
        "bytes_per_field": sizes,
        "action_mean": stats.get("action", {}).get("mean", []),
        "action_std": stats.get("action", {}).get("std", []),
    }


def text(info: dict[str, Any]) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(info["outcomes"].items())) or "none"
    sources = ", ".join(f"{k} {v}" for k, v in sorted(info["sources"].items())) or "none"
    h, w = info["image_size"]
    lines = [
        f"dataset {info['dataset']}",
        f"  episodes {info['episodes']}, steps {info['steps']} "
        f"(mean length {info['mean_length']:.1f}), {info['shards']} shard(s), "
        f"{info['bytes'] / 1e6:.1f} MB",
        f"  outcomes: {outcomes}",
        f"  sources: {sources}",
        f"  images {h}x{w}, state {info['state_dim']} values, actions "
        f"{' '.join(info['action_dims'])}, MC returns with gamma {info['gamma']:g}",
        f"  incomplete episodes: {info['incomplete_episodes']}; dropped steps: "
        f"{sum(info['dropped_steps'].values())} {info['dropped_steps'] or ''}".rstrip(),
        f"  instructions ({len(info['instructions'])}):",
    ]
    lines += [f"    {i['episodes']:5d}  {i['text']}" for i in info["instructions"][:20]]
    if len(info["instructions"]) > 20:
        lines.append(f"    ... and {len(info['instructions']) - 20} more")
    if info["action_mean"]:
        lines.append("  action mean/std: " + ", ".join(
            f"{n} {m:.3g}/{s:.3g}" for n, m, s in
            zip(info["action_dims"], info["action_mean"], info["action_std"], strict=True)))
    return "\n".join(lines)


def plot(store: DatasetStore, path: Path) -> None:
    """PNG: episode lengths, episode returns, MC returns, action bins per dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = store.episodes
    if not eps:
        raise DatasetError(f"{store.root} has no episodes to plot")
    names = store.tokenizer_config["names"]
    bins = store.tokenizer_config["bins"]
    hist = np.asarray(store.stats().get("action_bins_histogram", []))
    cols = 4
    rows = 1 + math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    lengths = [int(e["length"]) for e in eps]
    axes[0][0].hist(lengths, bins=min(30, max(5, len(set(lengths)))), color="tab:blue")
    axes[0][0].set(title="episode length", xlabel="steps", ylabel="episodes")
    by_outcome: dict[str, list[float]] = {}
    for e in eps:
        by_outcome.setdefault(e.get("outcome", "unknown"), []).append(float(e["reward"]))
    axes[0][1].bar(list(by_outcome), [len(v) for v in by_outcome.values()],
                   color="tab:green")
    axes[0][1].set(title="episodes by outcome", ylabel="episodes")
    returns = [float(e["reward"]) for e in eps]
    axes[0][2].hist(returns, bins=10, color="tab:orange")
    axes[0][2].set(title="episode return", xlabel="return", ylabel="episodes")
    mc = np.concatenate([np.asarray(store.episode_field(i, "mc_return"))
                         for i in range(len(eps))])
    axes[0][3].hist(mc, bins=30, color="tab:purple")
    axes[0][3].set(title=f"MC return per step (gamma {store.gamma:g})", xlabel="return",
                   ylabel="steps")
    for k, name in enumerate(names):
        ax = axes[1 + k // cols][k % cols]
        counts = hist[k, :bins[k]] if hist.size else np.zeros(bins[k])
        ax.bar(np.arange(bins[k]), counts, width=1.0, color="tab:gray")
        ax.set(title=f"action '{name}' bins", xlabel="bin", ylabel="steps")
    for k in range(len(names), (rows - 1) * cols):
        axes[1 + k // cols][k % cols].axis("off")
    fig.suptitle(f"{store.root.name}: {len(eps)} episodes, {sum(lengths)} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
