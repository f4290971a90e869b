"""The demo's recipe: every setting of its data, training and evaluation in one place.

``python -m qt_ros.demo`` takes the defaults of its options from :data:`DEFAULT`; change a value
here to change what ``make demo`` does, or pass an option for one run
(``python -m qt_ros.demo --help``). ``train_args`` holds any further ``qt-ros train`` options
(e.g. ``("--alpha", "1.0")``), passed through as written, after the demo's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from qt_ros.sim.simulator import episode_steps


@dataclass(frozen=True)
class Recipe:
    """What ``make demo`` collects, trains and evaluates (one field per setting)."""

    task: str = "lift"
    """lift: pick up the red block; place: put it on the green pad."""

    # ---- collection (``qt-ros sim collect``, in-process, into real bags)
    demos: int = 300
    """Clean demonstrations (the demonstrator with ``demo_noise``, no scripted mistakes)."""
    replays: int = 0
    """Noisy replays: more noise and mostly a scripted mistake, so mostly failures."""
    demo_noise: float = 0.002
    """Demonstrator noise of the clean demonstrations, m per step."""
    replay_mistake_rate: float = 0.6
    """Probability of a scripted mistake in a noisy replay."""
    image_size: int = 64
    """Camera image size of collection and training resolution of conversion (pixels)."""
    tokenizer: str = "train/tokenizer_terminate_first.json"
    """Action tokenizer of the conversion, a file under config/ (empty: qt-ros convert's
    default, terminate decoded last). Terminate first: decoded last, after a prefix that
    matches the data's final steps, Q-T chose "terminate" in 29 of 30 episodes at 6000 steps;
    decoded first, in 0 of 30 (docs/design.md 7.1)."""
    collect_workers: int = 2
    """Worker processes of the collection (one simulator each)."""

    # ---- training (``qt-ros train``)
    preset: str = "tiny"
    """Model size: tiny | small | base."""
    batch_size: int = 32
    lr: float = 1e-3
    """AdamW learning rate."""
    train_steps: int = 40000
    """Gradient steps of the first training round."""
    train_minutes: float = 16.0
    """Wall-time limit of the first training round (it stops at the steps or here). Steps
    are what the policy's success is bought with: on the demo's data and model, Q-T scored 77
    and 63 of 100 (two training seeds) at 16000 steps and 85 and 85 at 24000 (docs/design.md
    7.1, session 6); 16 minutes are ~19000 steps on a quiet 2-core VM, and keep ``make demo``
    within 30 minutes of a fresh clone."""
    encoder: str = "hash"
    """Instruction encoder: hash (feature hashing) or minilm (pretrained sentence encoder).
    With one instruction either is a constant input, yet on the same data, model and budget
    Q-T scored 77/100 with hash and 3/100 with minilm (the demo's first stride-4 run: 3/100
    too; docs/design.md 7.1), so the demo uses hash."""
    train_config: str = "train/demo.yaml"
    """``qt-ros train --config`` file under config/ (history, model fields; the recipe's own
    options override it; empty: none)."""
    train_args: tuple[str, ...] = ()
    """Further ``qt-ros train`` options, e.g. ("--alpha", "1.0"), for both rounds."""
    compare_config: str = "train/noisy_mix.yaml"
    """``qt-ros train --config`` file of every variant of the comparison (``--full``), whose
    data is the noisy mix: Q-T with ``conservative_radius`` 0.2 (95, 88 and 12 of 100 on the
    mix over three training seeds, against 2 with the paper's rule; docs/design.md 7.1); BC
    does not read the radius."""

    # ---- choosing the deployed checkpoint (``qt-ros select``)
    select_episodes: int = 30
    """Closed-loop episodes per candidate checkpoint, on validation scenes apart from every
    other seed of the demo (0: deploy the first round's last weights). The last weights are a
    draw: one first round in eight of this recipe collapsed (1/100, every episode terminating
    early) where the others scored 72-95/100, and successive checkpoints of one run differ by
    tens of points (docs/design.md 7.1, sessions 11 and 12)."""
    select_last: int = 4
    """Candidates: the first round's last ``select_last`` kept copies (the final weights one of
    them)."""
    keep_every: int = 2000
    """Steps between the kept copies of the first round (``qt-ros train --keep-every``)."""
    improve_keep_every: int = 1000
    """Steps between the kept copies of the second round. After it ``qt-ros select
    --incumbent`` runs on fresh validation scenes: the second round's last ``select_last``
    copies replace the first round's deployed policy only when a paired sign test says one is
    better, since a second round can be worse: from first-round checkpoints at 11, 42 and 65
    of 100, a second round on the data with the policy's own episodes appended scored 26, 42
    and 62, where the same steps on the demonstrations alone scored 77, 94 and 92
    (docs/design.md 7.1, session 13)."""

    # ---- evaluation
    ros_episodes: int = 30
    """Policy episodes through the ROS nodes (sim_robot, policy, recorder) on unseen scenes."""
    eval_episodes: int = 100
    """In-process ``qt-ros eval`` episodes (unseen seeds) before and after the second round."""
    max_steps: int = 0
    """Control steps a policy episode may take (0: the task's,
    :data:`qt_ros.sim.simulator.EPISODE_STEPS`)."""

    # ---- the self-improvement round (the policy's own episodes, then ``train --init``)
    improve: bool = True
    """Run the second round: record the policy's episodes, append, train on from the first."""
    improve_episodes: int = 100
    """Policy episodes recorded (in-process, labelled by the simulator) for the second round,
    besides the ROS episodes."""
    improve_steps: int = 10000
    """Gradient steps of the second training round."""
    improve_minutes: float = 3.0
    """Wall-time limit of the second training round."""
    improve_warmup_steps: int = 500
    """Learning-rate warm-up of the second round (``qt-ros train --warmup-steps``): it starts
    a fresh optimizer on a trained network. From the same first checkpoint, data and 3036
    steps, the second round scored 84/100 without warm-up and 92/100 with 500 steps of it
    (the first round: 94/100; docs/design.md 7.1, session 6)."""

    @property
    def decisions(self) -> int:
        """Control steps a policy episode may take (``max_steps`` or the task's default)."""
        return episode_steps(self.task, self.max_steps)


DEFAULT = Recipe()
