"""Offline evaluation of a Q-function on a dataset (``qt-ros eval --offline CKPT DATASET``).

No robot and no simulator: the checkpoint's network reads the dataset's steps and reports

- **TD error**: its Q of the data's action against the Bellman target the learner would train it
  toward (bootstrapped from the network itself: a checkpoint keeps no target network), with the
  learner's switches (autoregressive targets, bootstrap, Monte Carlo bound) as trained;
- **Q against the Monte Carlo return**, for the steps of successful and of failed episodes: a Q
  function that has learned the data predicts high values where episodes succeed and low ones
  where they fail (Q of the whole action: the last dimension's Q of the data's bins);
- **agreement with the demonstrations**: per action dimension, how often the greedy action (the
  policy's) picks the demonstration's bin, over the steps of demonstration episodes (or of
  successful episodes when there are none), and the bin confusion behind it;
- **per phase** (when the action has a ``gripper`` dimension): the same agreement split by the
  data's gripper command (open: reaching; closed: carrying), and the cosine between the greedy
  and the data's horizontal (x, y) command on the steps where the data moves. A two-phase task
  can be learned in one phase and not in the other, which the overall agreement hides.

``evaluate`` returns the summary (JSON-ready) and the per-step arrays; ``plot`` draws the Q
against return scatter and the per-dimension confusion matrices. Training uses the same
function every ``--eval-every`` steps to keep ``best/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from qt_ros.qtransformer.learner import bellman_targets
from qt_ros.qtransformer.learner_config import LearnerConfig
from qt_ros.qtransformer.model import greedy

# Confusion matrices group bins into at most this many cells per axis.
CONFUSION_CELLS = 16
# A step "moves" when the data's horizontal command is at least this share of the largest one.
MOVE_SHARE = 0.3


@torch.no_grad()
def evaluate(model, dataset, learner_config: LearnerConfig | None = None,
             max_steps: int = 0, batch_size: int = 32) -> tuple[dict, dict]:
    """(summary, per-step arrays) of ``model`` on ``dataset`` (a ``QTransformerDataset``);
    ``max_steps`` > 0 reads that many steps, evenly spaced, instead of all."""
    cfg = learner_config or LearnerConfig()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(dataset)
    indices = (np.linspace(0, n - 1, max_steps).round().astype(np.int64)
               if 0 < max_steps < n else np.arange(n))
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("q", "target", "q_action", "mc_return",
                                                         "bins", "greedy")}
    try:
        for start in range(0, len(indices), batch_size):
            batch = dataset.read_batch(indices[start:start + batch_size])
            for key, value in _batch_arrays(model, batch, cfg, device).items():
                rows[key].append(value)
    finally:
        model.train(was_training)
    steps = {k: np.concatenate(v) for k, v in rows.items()}
    episodes = [dataset.episodes[int(k)] for k in dataset._episode_of[indices]]
    steps["outcome"] = np.asarray([e.get("outcome", "unknown") for e in episodes])
    steps["source"] = np.asarray([e.get("source", "autonomous") for e in episodes])
    return _summary(steps, dataset.tokenizer, model.cfg.action_bins), steps


def _batch_arrays(model, batch: dict, cfg: LearnerConfig, device) -> dict[str, np.ndarray]:
    b = batch["action_bins"].shape[0]
    get = {k: v.to(device) for k, v in batch.items()}
    bins = get["action_bins"].long()
    context = model.observe(torch.cat([get["frames"], get["next_frames"]]),
                            torch.cat([get["instruction_embedding"]] * 2).float(),
                            torch.cat([get["state"], get["next_state"]]).float())
    q = model.q_from_context(context, torch.cat([bins, bins])).float()      # [2B, d, K]
    targets = bellman_targets(q[:b], q[b:, 0], model.valid_mask, get["reward"], get["discount"],
                              get["done"], get["mc_return"],
                              autoregressive=cfg.autoregressive_targets, bootstrap=cfg.bootstrap,
                              mc_lower_bound=cfg.mc_lower_bound)
    q_taken = q[:b].gather(2, bins[..., None])[..., 0]                        # [B, d]
    chosen, _ = model.decode(context[:b], greedy)
    return {"q": q_taken.cpu().numpy(), "target": targets.float().cpu().numpy(),
            "q_action": q_taken[:, -1].cpu().numpy(),
            "mc_return": get["mc_return"].float().cpu().numpy(),
            "bins": bins.cpu().numpy(), "greedy": chosen.cpu().numpy()}


def _summary(steps: dict, tokenizer, action_bins) -> dict:
    names = tokenizer.names
    error = steps["q"] - steps["target"]
    demos = steps["source"] == "demonstration"
    reference, label = ((demos, "demonstration episodes") if demos.any() else
                        (steps["outcome"] == "success", "successful episodes"))
    agree = steps["greedy"][reference] == steps["bins"][reference]            # [R, d]
    per_dim = {name: (float(agree[:, i].mean()) if len(agree) else None)
               for i, name in enumerate(names)}
    groups = {"success": steps["outcome"] == "success", "failure": steps["outcome"] == "failure",
              "all": np.ones(len(error), dtype=bool)}
    return {
        "steps": int(len(error)),
        "td_loss": float(0.5 * np.mean(error ** 2)),
        "td_error": float(np.mean(np.abs(error))),
        "td_error_per_dimension": {name: float(np.mean(np.abs(error[:, i])))
                                   for i, name in enumerate(names)},
        "q_vs_return": {name: _q_vs_return(steps["q_action"][m], steps["mc_return"][m])
                        for name, m in groups.items()},
        "agreement": {"reference": label, "steps": int(reference.sum()),
                      "mean": float(agree.mean()) if agree.size else None,
                      "per_dimension": per_dim,
                      "mean_bin_distance": {
                          name: (float(np.abs(steps["greedy"][reference, i]
                                              - steps["bins"][reference, i]).mean())
                                 if len(agree) else None) for i, name in enumerate(names)}},
        "phases": phases(steps, reference, tokenizer),
        "action_bins": [int(k) for k in action_bins],
        "dimension_names": list(names),
    }


def phases(steps: dict, reference: np.ndarray, tokenizer) -> dict | None:
    """Agreement and horizontal direction of the greedy action on the ``reference`` steps, per
    phase of the data's gripper command ("gripper open" below the middle of its range, "gripper
    closed" above); None when the action has no ``gripper`` dimension. ``direction``: mean
    cosine between the greedy and the data's (x, y) command over the steps where the data's is
    at least ``MOVE_SHARE`` of the largest x or y command (a greedy zero counts as cosine 0)."""
    names = tokenizer.names
    if "gripper" not in names:
        return None
    g = names.index("gripper")
    grip = tokenizer.bin_values(g)[steps["bins"][:, g]]
    middle = (tokenizer.low[g] + tokenizer.high[g]) / 2
    planar = [names.index(n) for n in ("x", "y") if n in names]
    largest = max((max(abs(tokenizer.low[i]), abs(tokenizer.high[i])) for i in planar), default=0)
    out = {}
    for phase, in_phase in (("gripper open", grip < middle), ("gripper closed", grip >= middle)):
        m = reference & in_phase
        agree = steps["greedy"][m] == steps["bins"][m]
        row = {"steps": int(m.sum()),
               "agreement": {name: (float(agree[:, i].mean()) if m.any() else None)
                             for i, name in enumerate(names)}}
        if planar:
            data, chosen = (np.stack([tokenizer.bin_values(i)[b[m, i]] for i in planar], axis=1)
                            for b in (steps["bins"], steps["greedy"]))
            size = np.linalg.norm(data, axis=1)
            moving = size >= MOVE_SHARE * largest
            cosine = (data * chosen).sum(1) / np.maximum(size * np.linalg.norm(chosen, axis=1),
                                                         1e-12)
            row["direction"] = {"steps": int(moving.sum()),
                                "cosine": float(cosine[moving].mean()) if moving.any() else None}
        out[phase] = row
    return out


def _q_vs_return(q: np.ndarray, returns: np.ndarray) -> dict:
    if len(q) == 0:
        return {"steps": 0}
    corr = (float(np.corrcoef(q, returns)[0, 1])
            if len(q) > 1 and q.std() > 0 and returns.std() > 0 else None)
    return {"steps": int(len(q)), "mean_q": float(q.mean()), "mean_return": float(returns.mean()),
            "mean_error": float((q - returns).mean()), "correlation": corr}


def scalars(summary: dict) -> dict[str, float]:
    """The summary's headline figures as flat scalars (TensorBoard, metric lines)."""
    out = {"td_error": summary["td_error"], "td_loss": summary["td_loss"]}
    if summary["agreement"]["mean"] is not None:
        out["agreement"] = summary["agreement"]["mean"]
    for group in ("success", "failure"):
        stats = summary["q_vs_return"][group]
        if stats["steps"]:
            out[f"q_{group}"] = stats["mean_q"]
            out[f"return_{group}"] = stats["mean_return"]
    return out


def write_json(summary: dict, out: Path) -> Path:
    path = Path(out) / "offline_eval.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def plot(summary: dict, steps: dict, out: Path) -> Path:
    """offline_eval.png: Q against Monte Carlo return (successful and failed episodes), and the
    bin confusion of the greedy action against the reference episodes' per dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, bins = summary["dimension_names"], summary["action_bins"]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = plt.figure(figsize=(4 + 2.6 * cols, max(3.6, 2.6 * rows)))
    grid = fig.add_gridspec(rows, cols + 2)
    ax = fig.add_subplot(grid[:, :2])
    for outcome, color in (("success", "tab:green"), ("failure", "tab:red")):
        m = steps["outcome"] == outcome
        ax.scatter(steps["mc_return"][m], steps["q_action"][m], s=6, alpha=0.5, color=color,
                   label=f"{outcome} ({int(m.sum())} steps)")
    other = ~np.isin(steps["outcome"], ["success", "failure"])
    if other.any():
        ax.scatter(steps["mc_return"][other], steps["q_action"][other], s=6, alpha=0.5,
                   color="grey", label=f"other ({int(other.sum())})")
    low = float(min(steps["mc_return"].min(), steps["q_action"].min()))
    high = float(max(steps["mc_return"].max(), steps["q_action"].max()))
    ax.plot([low, high], [low, high], "k--", lw=0.8)
    ax.set_xlabel("Monte Carlo return")
    ax.set_ylabel("Q of the data's action")
    ax.set_title(f"Q vs return; TD error {summary['td_error']:.3g}")
    ax.legend(fontsize="small")
    reference = (steps["source"] == "demonstration") if (steps["source"] == "demonstration").any() \
        else (steps["outcome"] == "success")
    for i, name in enumerate(names):
        cell = fig.add_subplot(grid[i // cols, 2 + i % cols])
        cells = min(CONFUSION_CELLS, bins[i])
        data = steps["bins"][reference, i] * cells // bins[i]
        chosen = steps["greedy"][reference, i] * cells // bins[i]
        matrix = np.zeros((cells, cells))
        np.add.at(matrix, (data, chosen), 1)
        cell.imshow(matrix, origin="lower", cmap="Blues")
        agreement = summary["agreement"]["per_dimension"][name]
        cell.set_title(f"{name}: {agreement:.0%}" if agreement is not None else name,
                       fontsize="small")
        cell.set_xticks([])
        cell.set_yticks([])
        if i % cols == 0:
            cell.set_ylabel("data bin", fontsize="x-small")
        if i // cols == rows - 1:
            cell.set_xlabel("greedy bin", fontsize="x-small")
    fig.suptitle(f"bins of the greedy action vs the {summary['agreement']['reference']}",
                 x=0.65, fontsize="medium")
    fig.tight_layout()
    path = Path(out) / "offline_eval.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
