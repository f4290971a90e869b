"""The demo's summary: what a run got (:func:`build_summary`), written as ``summary.json``,
``summary.md`` (success through ROS and in-process before/after the second round, each with its
Wilson 95 % interval; phase times), ``summary.png`` (success rates with intervals, loss and Q
curves from ``metrics.jsonl``, frame strips of a success and a failure) and ``policy_episode.gif``
(a policy episode through ROS)."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qt_ros.evaluation.intervals import wilson_interval

STRIP_FRAMES = 6  # frames per episode in the strips of summary.png


def success(rows_or_counts, episodes: int | None = None) -> dict:
    """Success count, rate and Wilson 95 % interval, from episode rows (``outcome``) or from a
    count and a number of episodes."""
    if episodes is None:
        episodes = len(rows_or_counts)
        wins = sum(r["outcome"] == "success" for r in rows_or_counts)
    else:
        wins = int(rows_or_counts)
    if not episodes:
        return {"episodes": 0, "successes": 0, "success_rate": None, "wilson_95": None}
    low, high = wilson_interval(wins, episodes)
    return {"episodes": episodes, "successes": wins, "success_rate": wins / episodes,
            "wilson_95": [round(low, 4), round(high, 4)]}


def rate_text(r: dict | None) -> str:
    """``24/30 = 80 % (95 % interval 63-90 %)``, or ``not run``."""
    if not r or not r.get("episodes"):
        return "not run"
    low, high = r["wilson_95"]
    return (f"{r['successes']}/{r['episodes']} = {100 * r['success_rate']:.0f} % "
            f"(95 % interval {100 * low:.0f}-{100 * high:.0f} %)")


def _metrics(checkpoint: Path) -> dict:
    path = checkpoint / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()
            if line.strip()] if path.exists() else []
    keep = ("step", "loss", "td_loss", "conservative_loss", "q_taken", "target")
    return {"steps": rows[-1]["step"] if rows else None,
            "final_loss": rows[-1]["loss"] if rows else None,
            "metrics": [{k: m[k] for k in keep if k in m} for m in rows]}


def build_summary(demo) -> dict:
    """The summary dict of a finished :class:`~qt_ros.demo.closed_loop.Demo`."""
    paths, results = demo.paths, demo.results
    collect = demo.out / "collect.json"
    dataset = {}
    if (paths["dataset"] / "dataset.json").exists():
        from qt_ros.data.dataset_reader import DatasetStore

        store = DatasetStore(paths["dataset"])
        sources: dict[str, int] = {}
        for e in store.episodes:
            sources[e["source"]] = sources.get(e["source"], 0) + 1
        dataset = {"episodes": len(store.episodes), "steps": store.num_steps,
                   "image_size": list(store.image_size), "by_source": sources}
    evals = {name: {k: e[k] for k in ("episodes", "successes", "success_rate", "wilson_95",
                                      "seeds")}
             for name, e in results["eval"].items()}
    training = {name: _metrics(paths[key]) for name, key in (
        ("round1", "checkpoint"), ("round2", "checkpoint_round2"))
        if (paths[key] / "metrics.jsonl").exists()}
    return {
        "task": demo.recipe.task,
        "recipe": demo._recipe_dict(),
        "collected": json.loads(collect.read_text())["by_kind"] if collect.exists() else {},
        "dataset": dataset,
        "ros": {**success(results["ros"]),
                "ended_by_terminate": sum(r["ended_by"] == "terminate" for r in results["ros"]),
                "rows": results["ros"]},
        "appended": results.get("appended", 0),
        "recorded": results.get("recorded"),
        "selection": _selection(results.get("selection")),
        "selection_round2": _selection(results.get("selection_round2")),
        "eval": evals,
        "training": training,
        "comparison": results.get("comparison"),
        "seconds": {**demo.timings, "total": round(time.monotonic() - demo.started, 1)},
        "paths": {"out": str(demo.out), **{k: str(v) for k, v in paths.items()}},
        "domain_id": demo.domain_id,
    }


def _selection(selection: dict | None) -> dict | None:
    """The candidates' steps and successes, the chosen step, which row is the incumbent (the
    policy in service, ``qt-ros select --incumbent``) and the replacement test, from
    selection.json."""
    if not selection:
        return None
    keep = ("step", "successes", "episodes", "wilson_95")
    rows = [{**{k: row[k] for k in keep}, "incumbent": bool(row.get("incumbent"))}
            for row in selection["rows"]]
    return {"seeds": selection["seeds"], "chosen_step": selection["chosen"]["step"],
            "chosen_incumbent": rows[selection["chosen_index"]]["incumbent"], "rows": rows,
            "test": selection.get("test")}


def selection_note(s: dict) -> str:
    """Which kept copy of the first round was deployed, and how the candidates scored."""
    chosen = s.get("selection")
    if not chosen:
        return ""
    seeds, rows = chosen["seeds"], chosen["rows"]
    scores = ", ".join(f"{row['step']}: {row['successes']}/{row['episodes']}" for row in rows)
    return (f"Deployed: the first round's weights at step {chosen['chosen_step']}, chosen among "
            f"its last {len(rows)} kept copies by closed-loop success on validation scenes "
            f"{seeds[0]}..{seeds[1]} (step: successes; {scores}).")


def round2_note(s: dict) -> str:
    """What the loop deploys after the second round: the first round's policy or one of the
    second round's kept copies, and how the candidates scored."""
    chosen = s.get("selection_round2")
    if not chosen:
        return ""
    seeds, rows = chosen["seeds"], chosen["rows"]
    first = next((row for row in rows if row["incumbent"]), None)
    copies = [row for row in rows if not row["incumbent"]]
    scores = ", ".join(f"{row['step']}: {row['successes']}/{row['episodes']}" for row in copies)
    winner = ("the first round's policy, kept" if chosen["chosen_incumbent"] else
              f"the second round's weights at step {chosen['chosen_step']}")
    against = (f"the first round's policy ({first['successes']}/{first['episodes']}) and "
               if first else "")
    test = chosen.get("test")
    why = ""
    if test:
        why = (f" The best copy succeeded on {test['wins']} scene(s) where the first round's "
               f"policy failed and failed on {test['losses']} where it succeeded: sign test p = "
               f"{test['p_value']:.2g}, {test['corrected_p']:.2g} for {len(copies)} copies; a "
               f"copy replaces the first round's policy at p <= {test['significance']:g}.")
    return (f"Deployed after the second round: {winner}, chosen on validation scenes "
            f"{seeds[0]}..{seeds[1]} between {against}the second round's last {len(copies)} "
            f"kept copies (step: successes; {scores}).{why}")


def failure_note(s: dict) -> str:
    """How the episodes through ROS failed, and the hint for the known collapse: when most
    episodes end by the policy's own terminate without success, the first round collapsed
    onto terminating early (one first round in eight so far; docs/design.md 7.1)."""
    rows = s["ros"].get("rows", [])
    failed = [r for r in rows if r["outcome"] != "success"]
    if not failed:
        return ""
    early = sum(r["ended_by"] == "terminate" for r in failed)
    note = (f"{len(failed)} of {len(rows)} episodes through ROS failed: {early} ended by the "
            f"policy's terminate, {len(failed) - early} by the step limit or an abort.")
    if early * 2 > len(rows):
        note += (" Most episodes terminate early: the first training round collapsed onto "
                 "terminating, which one first round in eight of the recipe has done so far "
                 "(docs/design.md 7.1, session 11)"
                 + (", and no kept copy chosen from escaped it" if s.get("selection") else "")
                 + "; another run (e.g. --seed 1) trains another draw.")
    return note


def summary_markdown(s: dict) -> str:
    """``summary.md``: the result first, then the data, training, the loop and the times."""
    r, ev = s["recipe"], s["eval"]
    lines = [f"# qt_ros demo: task '{s['task']}'", "",
             "| policy | success | measured on |", "|---|---|---|",
             f"| Q-Transformer through ROS (sim_robot, policy, recorder nodes; lockstep) | "
             f"{rate_text(s['ros'])} | unseen scenes, recorded as bags |"]
    for name, title in (("round1", "Q-Transformer, in-process `qt-ros eval`"),
                        ("round2", "after the second round (`train --init` on its own "
                                   "episodes)"),
                        ("deployed", "deployed after the second round (chosen: see "
                                     "below)")):
        if name in ev:
            seeds = ev[name]["seeds"]
            lines.append(f"| {title} | {rate_text(ev[name])} | unseen seeds "
                         f"{seeds[0]}..{seeds[1]} |")
    if "round1" in ev and "round2" in ev:
        diff = ev["round2"]["success_rate"] - ev["round1"]["success_rate"]
        lines += ["", f"Second round: {100 * diff:+.0f} points on the same seeds."]
    for note in (selection_note(s), round2_note(s), failure_note(s)):
        if note:
            lines += ["", note]
    collected = ", ".join(f"{c['episodes']} {kind} ({c['successes']} successful)"
                          for kind, c in s["collected"].items() if c.get("episodes"))
    d = s["dataset"]
    lines += ["", "## Data and training", "",
              f"- collected (`qt-ros sim collect`): {collected or 'n/a'}",
              f"- dataset: {d.get('episodes', 0)} episodes, {d.get('steps', 0)} steps, "
              f"{d.get('image_size')} px; by source {d.get('by_source', {})}; "
              f"{s['appended']} policy episode(s) appended"
              + (f" ({s['recorded']['episodes']} of them recorded in-process, "
                 f"{s['recorded']['successes']} successful)" if s.get("recorded") else ""),
              f"- training: {r['preset']} model, batch {r['batch_size']}, lr {r['lr']:g}"
              + (f", extra options `{' '.join(map(str, r['train_args']))}`"
                 if r["train_args"] else "")]
    for name, t in s["training"].items():
        loss = f"{t['final_loss']:.4f}" if t["final_loss"] is not None else "n/a"
        lines.append(f"- {name}: {t['steps']} steps, final loss {loss}")
    if s.get("comparison"):
        lines += ["", "## Comparison (`--full`)", "", s["comparison"].strip()]
    lines += ["", "## Phase times", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in s["seconds"].items()]
    p = s["paths"]
    lines += ["", "## Files", "",
              f"- policy episodes (bags, labelled): `{p['policy_episodes']}`",
              f"- dataset: `{p['dataset']}`; checkpoints: `{p['checkpoint']}`, "
              f"`{p['checkpoint_round2']}`"
              + (f"; deployed after the first round: `{p['policy']}`" if s.get("selection")
                 else "")
              + (f"; after the second round: `{p['policy_round2']}`"
                 if s.get("selection_round2") else ""),
              "- `summary.png`, `policy_episode.gif`; evaluation GIFs under `eval/`", ""]
    return "\n".join(lines)


def summary_text(s: dict) -> str:
    """The lines printed at the end of the demo."""
    lines = ["", f"qt_ros demo ({s['task']}), {s['seconds']['total'] / 60:.1f} min:",
             f"  Q-T success through ROS:     {rate_text(s['ros'])}"]
    for name, title in (("round1", "in-process eval, round 1:"),
                        ("round2", "in-process eval, round 2:"),
                        ("deployed", "deployed after round 2:")):
        if name in s["eval"]:
            lines.append(f"  {title:28s} {rate_text(s['eval'][name])}")
    for note in (selection_note(s), round2_note(s), failure_note(s)):
        if note:
            lines += textwrap.wrap(note, 96, initial_indent="  ", subsequent_indent="  ")
    lines.append("  phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds"].items()
                                           if k != "total"))
    lines.append(f"  summary: {Path(s['paths']['out']) / 'summary.md'} (and .png)")
    return "\n".join(lines)


def plot_summary(s: dict, png: Path, strips: dict[str, list[np.ndarray]] | None = None) -> Path:
    """Success rates with their intervals, loss and Q curves of every training round, and a
    strip of frames per episode in ``strips`` (title -> frames), in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strips = strips or {}
    fig = plt.figure(figsize=(15, 4.5 + 2.2 * len(strips)))
    grid = fig.add_gridspec(1 + len(strips), STRIP_FRAMES,
                            height_ratios=[2.2] + [1] * len(strips))
    ax_rate = fig.add_subplot(grid[0, 0:2])
    ax_loss = fig.add_subplot(grid[0, 2:4])
    ax_q = fig.add_subplot(grid[0, 4:6])
    bars = [("ROS", s["ros"])] + [(f"eval {n}", e) for n, e in s["eval"].items()]
    bars = [(name, r) for name, r in bars if r.get("episodes")]
    for x, (name, r) in enumerate(bars):
        low, high = r["wilson_95"]
        rate = r["success_rate"]
        ax_rate.bar(x, rate, color="tab:orange" if name == "ROS" else "tab:blue")
        ax_rate.errorbar(x, rate, yerr=[[rate - low], [high - rate]], color="k", capsize=4)
        ax_rate.annotate(f"{r['successes']}/{r['episodes']}", (x, high), ha="center",
                         va="bottom", fontsize="small")
    ax_rate.set_xticks(range(len(bars)), [b[0] for b in bars])
    ax_rate.set_ylim(0, 1.15)
    ax_rate.set_title(f"success on '{s['task']}' (95 % Wilson)")
    for name, t in s["training"].items():
        m = t["metrics"]
        steps = [row["step"] for row in m]
        ax_loss.plot(steps, [row["loss"] for row in m], marker=".", label=f"{name} loss")
        if m and "q_taken" in m[0]:
            ax_q.plot(steps, [row["q_taken"] for row in m], marker=".",
                      label=f"{name} Q(taken)")
        if m and "target" in m[0]:
            ax_q.plot(steps, [row["target"] for row in m], ls="--", label=f"{name} target")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("gradient step")
    ax_loss.set_title("training loss")
    ax_q.set_xlabel("gradient step")
    ax_q.set_title("Q of the data's actions")
    for ax in (ax_loss, ax_q):
        if ax.lines:
            ax.legend(fontsize="small")
    for row, (title, frames) in enumerate(strips.items(), 1):
        picks = np.linspace(0, len(frames) - 1, min(STRIP_FRAMES, len(frames))).round()
        for col, index in enumerate(picks.astype(int)):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(frames[index], interpolation="nearest")
            ax.set_title(f"{title}, step {index}" if col == 0 else f"step {index}",
                         fontsize="small", loc="left" if col == 0 else "center")
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def policy_strips(dataset: Path, ros_rows: list[dict]) -> dict[str, list[np.ndarray]]:
    """The frames of the first successful and the first failed policy episode through ROS, as
    converted into the dataset (title -> frames)."""
    if not ros_rows or not (dataset / "dataset.json").exists():
        return {}
    from qt_ros.data.dataset_reader import DatasetStore

    store = DatasetStore(dataset)
    index = {e["episode_id"]: i for i, e in enumerate(store.episodes)}
    strips = {}
    for outcome in ("success", "failure"):
        row = next((r for r in ros_rows if r["outcome"] == outcome
                    and r["episode_id"] in index), None)
        if row is not None:
            frames = store.episode_field(index[row["episode_id"]], "frames")
            strips[f"ROS {outcome}"] = [np.asarray(f) for f in frames]
    return strips


def write_summary(s: dict, out: Path, paths: dict[str, Path],
                  say: Callable[[str], None]) -> str:
    """Write summary.json, summary.md, summary.png and policy_episode.gif; returns the text to
    print. The pictures are best effort: a failed plot is reported, not fatal."""
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    (out / "summary.md").write_text(summary_markdown(s))
    try:
        strips = policy_strips(paths["dataset"], s["ros"]["rows"])
        plot_summary(s, out / "summary.png", strips)
        if strips:
            from qt_ros.evaluation.episode_video import write_gif

            title, frames = next(iter(strips.items()))
            write_gif(frames, out / "policy_episode.gif", label=title)
    except Exception as exc:  # noqa: BLE001 - the pictures must not fail the demo
        say(f"could not draw the summary's pictures: {type(exc).__name__}: {exc}")
    return summary_text(s)
