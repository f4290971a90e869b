"""Closed-loop episodes on the simulated robot with the policy node's own acting code, in-process.

Per worker (process): one :class:`~qt_ros.sim.simulator.TabletopSim`, the policy loaded by the
node's own :func:`qt_ros.control.policy_config.load_policy` (or the
:class:`~qt_ros.evaluation.demonstrator_policy.DemonstratorPolicy`), a
:class:`~qt_ros.control.control_loop.ControlLoop` with the node's configuration per episode, and
a clock that advances one control period per step. A control step is what the lockstep ROS
set-up does:

    sim frame + joint_states (the same tick, one stamp) -> loop.on_joint_states, on_frame,
      tick, frame_wait -> Policy.act -> terminate? / safety filter -> command -> SimOutput
      -> TabletopSim.step

With ``lockstep`` on (``config/sim.yaml``) the loop pairs the frame with the state of its stamp,
as the node does; here they come from the same tick by construction.

An episode is a fresh loop (as a node configured for it: no log or stop state carried over from
the previous episode), ``set_enabled(True)`` (fresh frame history and rate limiter, as the
episode driver enables the node), steps until the policy terminates (the loop asks to end the
episode; the terminating step is not executed) or ``max_steps`` ran, then the success detector
decides. Everything is seeded by the scene seed, so an episode's outcome does not depend on the
worker that ran it nor on the other episodes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from qt_ros.control.control_loop import ControlLoop
from qt_ros.evaluation.eval_config import EvalConfig, EvalSetup, resolve_setup
from qt_ros.evaluation.sim_output import SimOutput
from qt_ros.sim.simulator import BLOCK_HALF, JOINT_NAMES, TABLE_TOP, TabletopSim

NOISE_STREAM = 104_729  # keeps the actuation noise apart from the scene's random numbers


@dataclass
class EpisodeOutcome:
    """One evaluated episode.

    ``steps``: control steps (decisions) including a terminating one; ``reason``: ``terminate``
    or ``max_steps``; ``lifted``: block bottom above the table at the end (m); ``hand``: where
    the hand ended (m); ``frames``: the camera frames, when asked for (one per step, then the
    final one).
    """

    seed: int
    success: bool
    steps: int
    reason: str
    holds: int
    grasped: bool
    lifted: float
    hand: tuple[float, float, float]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    frames: list[np.ndarray] | None = None

    def row(self) -> dict:
        """The JSON row of this episode (without frames)."""
        return {"seed": self.seed, "success": self.success, "steps": self.steps,
                "reason": self.reason, "holds": self.holds, "grasped": self.grasped,
                "lifted_m": round(self.lifted, 4), "hand_m": [round(v, 4) for v in self.hand],
                "warnings": self.warnings[:3],
                "seconds": round(self.seconds, 3)}


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class EpisodeRunner:
    """A simulator, a policy and the node's control loop; :meth:`run` plays one episode."""

    def __init__(self, config: EvalConfig, setup: EvalSetup | None = None):
        self.config = config
        self.setup = setup or resolve_setup(config)
        self.sim = TabletopSim(self.setup.sim)
        policy, layout = load_actor(config, self.setup, self.sim)
        self.policy = policy
        self.layout = layout
        self.output = SimOutput(self.setup.policy, layout, self.setup.sim.control_period)
        self.clock = FakeClock()
        self._tick = 0  # stamps of frames and joint states, increasing across episodes
        self.loop: ControlLoop | None = None

    def _new_loop(self) -> ControlLoop:
        loop = ControlLoop(self.setup.policy, self.layout, self.policy, self.output,
                           clock=self.clock)
        loop.activate()
        loop.on_instruction(self.sim.config.instruction)
        return loop

    def run(self, seed: int, record_frames: bool = False) -> EpisodeOutcome:
        start = time.perf_counter()
        sim, output = self.sim, self.output
        sim.reset(seed)
        output.begin(self.config.noise, np.random.default_rng([int(seed), NOISE_STREAM]))
        self.loop = loop = self._new_loop()
        episode_id = f"eval-{seed}"
        loop.episode_started(episode_id)
        loop.set_enabled(True)
        frames: list[np.ndarray] | None = [] if record_frames else None
        steps, reason = 0, "max_steps"
        period = self.setup.policy.period
        for step in range(self.config.decisions):
            frame = sim.render()
            if frames is not None:
                frames.append(frame)
            self._tick += 1
            stamp = round(self._tick * period * 1e9)  # ns, as the node passes header stamps
            loop.on_joint_states(JOINT_NAMES, sim.joint_positions(), stamp=stamp)
            loop.on_frame(frame, header=step, received=self.clock(), stamp=stamp)
            if loop.tick():
                loop.frame_wait()
            steps += 1
            if output.ended:
                reason = "terminate"
                break
            sim.step(output.take_action())
            self.clock.advance(period)
        holds, warnings = output.holds, list(output.warnings)  # the policy's, not the stop's
        loop.set_enabled(False)  # what the driver does at the step budget (a hold)
        loop.episode_ended(episode_id)
        self.clock.advance(period)
        if frames is not None and reason == "max_steps":
            frames.append(sim.render())
        state = sim.state()
        return EpisodeOutcome(
            seed=int(seed), success=bool(state.success), steps=steps, reason=reason,
            holds=holds, grasped=bool(state.grasped),
            lifted=float(state.block[2] - BLOCK_HALF - TABLE_TOP),
            hand=tuple(float(v) for v in state.ee), warnings=warnings,
            seconds=time.perf_counter() - start, frames=frames)

    def close(self) -> None:
        self.sim.close()


def load_actor(config: EvalConfig, setup: EvalSetup, sim: TabletopSim):
    """(policy, action layout): the checkpoint through the node's loader (resolve, warm-up), or
    the demonstrator checked against the same configuration."""
    if config.policy == "demonstrator":
        from qt_ros.evaluation.demonstrator_policy import DemonstratorPolicy

        actor = DemonstratorPolicy(sim, setup.demonstrator, len(setup.policy.joint_names))
        return actor, setup.policy.resolve(actor.tokenizer, actor.state_dim)
    from qt_ros.control.policy_config import load_policy

    return load_policy(setup.policy)


def check_actor(config: EvalConfig, setup: EvalSetup) -> str:
    """Load the checkpoint once and check it against the set-up (raises ConfigError with the
    reason); returns its model id."""
    if config.policy == "demonstrator":
        return "scripted-demonstrator"
    from qt_ros.control.policy_config import load_policy

    policy, _ = load_policy(setup.policy)
    return str(policy.model_id)


# ---------------------------------------------------------------------- many episodes

_WORKER: EpisodeRunner | None = None


def _start_worker(config: EvalConfig, setup: EvalSetup) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(1)
    _WORKER = EpisodeRunner(config, setup)


def _run_in_worker(seed: int, record_frames: bool) -> EpisodeOutcome:
    return _WORKER.run(seed, record_frames)


def run_episodes(config: EvalConfig, setup: EvalSetup,
                 progress: Callable[[EpisodeOutcome], None] | None = None
                 ) -> list[EpisodeOutcome]:
    """Every episode of ``config`` (in ``workers`` processes when > 1), in seed order."""
    jobs = [(seed, k < config.video) for k, seed in enumerate(config.seeds)]
    outcomes = []
    for outcome in _iterate(config, setup, jobs):
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return sorted(outcomes, key=lambda o: o.seed)


def _iterate(config: EvalConfig, setup: EvalSetup,
             jobs: list[tuple[int, bool]]) -> Iterator[EpisodeOutcome]:
    workers = min(config.workers, len(jobs))
    if workers == 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        runner = EpisodeRunner(config, setup)
        try:
            for seed, frames in jobs:
                yield runner.run(seed, frames)
        finally:
            runner.close()
            torch.set_num_threads(threads)
        return
    # spawn, not fork: a forked child would inherit torch's threads and an OpenGL context.
    context = multiprocessing.get_context("spawn")
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the children read them at start-up
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                 initargs=(config, setup)) as pool:
            futures = [pool.submit(_run_in_worker, seed, frames) for seed, frames in jobs]
            for future in as_completed(futures):
                yield future.result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
