"""The demo's summary: the text printed at the end and the PNG (success rates, training loss,
episodes, camera frames)."""

from __future__ import annotations

from pathlib import Path


def summary_text(s: dict) -> str:
    """The summary printed at the end of the demo and saved as ``summary.txt``."""
    def pct(r: dict) -> str:
        if not r["episodes"]:
            return "not run"
        return f"{r['successes']}/{r['episodes']} = {100 * r['success_rate']:.0f} %"

    p = s["paths"]
    t = s["training"]
    lines = [
        "",
        "qt_ros demo summary",
        f"  task                      {s['task']}",
        f"  demonstrations            {pct(s['demonstrations'])} successful (scripted, with "
        f"noise and mistakes)",
        f"  policy after training     {pct(s['policy'])} successful ("
        f"{s['policy']['ended_by_terminate']} ended by the policy's terminate, the others by "
        f"the {s['settings']['max_steps']}-step limit)",
        f"  training                  {t['steps']} steps of the {t['preset']} model, final loss "
        + (f"{t['final_loss']:.4f}" if t["final_loss"] is not None else "n/a"),
        f"  wall time                 {s['seconds']['total']:.0f} s "
        + "(" + ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds"].items() if k != "total")
        + ")",
        f"  demonstration bags        {p['demonstrations']}",
        f"  policy episode bags       {p['policy_episodes']}",
        f"  dataset                   {p['dataset']} ({s['dataset'].get('episodes', 0)} "
        f"episodes, {s['dataset'].get('steps', 0)} steps)",
        f"  checkpoint                {p['checkpoint']}",
        f"  plot                      {p['summary_png']}",
        "",
        "A few minutes of CPU training on a few dozen demonstrations seldom makes a good policy;",
        "the point is the loop. Go on from here:",
        f"  qt-ros dataset info {p['dataset']}",
        f"  qt-ros train {p['dataset']} --init {p['checkpoint']} --out <new checkpoint>",
        f"  ros2 launch qt_ros sim.launch.py checkpoint:={p['checkpoint']}   (with launch_ros)",
    ]
    return "\n".join(lines)


def plot_summary(s: dict, png: Path, frames: list | None = None) -> Path:
    """Success rates, training loss, every episode's duration and outcome, and a few camera
    frames (``(title, HxWx3 image)`` pairs, as the model sees them), in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = frames or []
    fig = plt.figure(figsize=(14, 8 if frames else 4))
    grid = fig.add_gridspec(2 if frames else 1, 12)
    ax_rate, ax_loss, ax_eps = (fig.add_subplot(grid[0, 4 * i:4 * i + 4]) for i in range(3))
    for k, (title, image) in enumerate(frames[:4]):
        ax = fig.add_subplot(grid[1, 3 * k:3 * k + 3])
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize="small")
        ax.axis("off")
    names = ["demonstrations", "policy"]
    rates = [s[n]["success_rate"] or 0.0 for n in names]
    bars = ax_rate.bar(names, rates, color=["tab:blue", "tab:orange"])
    for bar, n in zip(bars, names, strict=True):
        ax_rate.annotate(f"{s[n]['successes']}/{s[n]['episodes']}",
                         (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom")
    ax_rate.set_ylim(0, 1.1)
    ax_rate.set_ylabel("success rate")
    ax_rate.set_title(f"task '{s['task']}'")
    metrics = s["training"]["metrics"]
    if metrics:
        ax_loss.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], marker=".")
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("gradient step")
    ax_loss.set_title(f"training loss ({s['training']['preset']} model)")
    offset = 0
    for source, colour in (("demonstration", "tab:blue"), ("policy", "tab:orange")):
        rows = s["episodes"][source]
        xs = list(range(offset, offset + len(rows)))
        ok = [r["outcome"] == "success" for r in rows]
        secs = [r["seconds"] for r in rows]
        ax_eps.scatter([x for x, o in zip(xs, ok, strict=True) if o],
                       [t for t, o in zip(secs, ok, strict=True) if o], color=colour,
                       marker="o", label=f"{source} success")
        ax_eps.scatter([x for x, o in zip(xs, ok, strict=True) if not o],
                       [t for t, o in zip(secs, ok, strict=True) if not o], color=colour,
                       marker="x", label=f"{source} failure")
        offset += len(rows)
    ax_eps.set_xlabel("episode")
    ax_eps.set_ylabel("seconds")
    ax_eps.set_title("episodes (o success, x failure)")
    ax_eps.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
