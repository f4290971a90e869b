"""Fast data collection on the simulated robot: the nodes' episodes, in-process, as real bags.

``qt-ros sim collect`` runs the simulator (:class:`~qt_ros.sim.simulator.TabletopSim`) and the
scripted demonstrator (:class:`~qt_ros.sim.demonstrator.ScriptedDemonstrator`) in one loop per
worker process and hands every message, serialized as CDR by the ``rosbags`` typestore, to the
recorder node's core (:class:`~qt_ros.episodes.recorder.EpisodeRecorder`). The bags have the
topics, message types, episode events, metadata and catalog records that ``sim_robot_node``,
``demonstrator_node`` and ``recorder_node`` (with ``config/sim.yaml``) write, so ``qt-ros
convert`` stays the only path from episodes to training data.

Time is that of a lockstep simulator: tick k is logged at ``start + k * control_period``. Each
tick writes the frame of the current state (``image``, then ``joint_states`` and
``task_success`` with the same stamp, as the sim node publishes them), then the commands
answering that frame a few ms later, in the order the demonstrator node publishes them: the arm
``TwistStamped`` (delta * control rate), then the gripper ``Float64``. The simulator then applies
``twist * period`` for one control period, as the sim node does. When the demonstrator
terminates (or ``max_steps`` decisions ran out) the last frame gets the hold command the nodes
send (zero twist, the gripper held); the episode then ends, labelled by the success detector
as ``sim_robot_node`` labels it. So every recorded frame has
exactly one arm and one gripper command: the converted episode has one step per frame.

The data mix of the paper: ``demos`` clean demonstrations (the demonstrator's noise of
``config/sim.yaml``, no scripted mistakes) and ``replays`` noisy replays (more noise, drawn per
episode, and a scripted mistake with probability ``replay_mistake_rate``: mostly failures).
Episode i (demonstrations first) uses scene and demonstrator seed ``seed + i``, so an episode is
a pure function of its seed and kind, whichever worker runs it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qt_ros.episodes.catalog import EpisodeCatalog
from qt_ros.episodes.recorder import EpisodeRecorder
from qt_ros.episodes.recorder_config import RecorderConfig, RecorderNodeConfig
from qt_ros.sim.collect_config import CollectConfig, CollectError
from qt_ros.sim.demonstrator import DemonstratorConfig, ScriptedDemonstrator
from qt_ros.sim.node_configs import DEFAULT_CONTROL_RATE
from qt_ros.sim.simulator import JOINT_NAMES, TabletopSim

KINDS = ("demo", "replay")
# When, after a tick, the recorder receives what answers it (ns): the sim node publishes the
# frame, joint states and success flag together; the demonstrator answers a few ms later.
STATE_DELAY_NS = 200_000
ARM_DELAY_NS = 4_000_000
GRIPPER_DELAY_NS = 4_200_000
MAPPING_FILE = "convert_mapping.yaml"


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to collect: its kind, seed (scene and demonstrator) and demonstrator."""

    kind: str  # demo | replay
    seed: int
    noise: float
    failure_rate: float

    def episode_id(self, robot: str) -> str:
        return f"{robot + '-' if robot else ''}{self.kind}-{self.seed:06d}"


@dataclass
class EpisodeReport:
    """What one collected episode was (also the extra fields of its catalog record)."""

    episode_id: str
    kind: str
    seed: int
    outcome: str  # success | failure: the success detector at the end
    steps: int  # recorded frames, each with its commands: the converted episode's steps
    ended_by: str  # terminate | step limit
    mistake: str  # the scripted mistake, "" if none
    noise: float


@dataclass
class CollectSummary:
    """A collection run: every episode's report, and the rates."""

    record_dir: str
    workers: int
    seconds: float = 0.0
    episodes: list[EpisodeReport] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C: the episodes running then were finished, no others
    skipped: int = 0  # --resume: this run's episodes found already recorded

    @property
    def steps(self) -> int:
        return sum(e.steps for e in self.episodes)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per kind: episodes, successes, steps, scripted mistakes."""
        out = {}
        for kind in KINDS:
            rows = [e for e in self.episodes if e.kind == kind]
            out[kind] = {"episodes": len(rows),
                         "successes": sum(e.outcome == "success" for e in rows),
                         "steps": sum(e.steps for e in rows),
                         "with_mistake": sum(bool(e.mistake) for e in rows)}
        return out

    def to_dict(self) -> dict[str, Any]:
        seconds = max(self.seconds, 1e-9)
        return {"record_dir": self.record_dir, "workers": self.workers,
                "interrupted": self.interrupted, "skipped": self.skipped,
                "episodes": len(self.episodes), "steps": self.steps,
                "seconds": round(self.seconds, 2),
                "steps_per_s": round(self.steps / seconds, 1),
                "episodes_per_min": round(60 * len(self.episodes) / seconds, 1),
                "by_kind": self.counts(),
                "mistakes": dict(Counter(e.mistake for e in self.episodes if e.mistake))}


def plan_episodes(config: CollectConfig) -> list[EpisodeSpec]:
    """The episodes of a run, demonstrations first; replay noise drawn from each one's seed."""
    specs = [EpisodeSpec("demo", config.seed + i, config.demo_noise, 0.0)
             for i in range(config.demos)]
    low, high = config.replay_noise
    for j in range(config.replays):
        seed = config.seed + config.demos + j
        noise = float(np.random.default_rng([seed, 104729]).uniform(low, high))
        specs.append(EpisodeSpec("replay", seed, noise, config.replay_mistake_rate))
    return specs


def demonstration_mapping(control_rate: float = DEFAULT_CONTROL_RATE) -> str:
    """The topic mapping (YAML) that converts the demonstrator's bags: its commands as actions."""
    return ("# qt-ros convert --mapping: the demonstrator's commands as actions\n"
            "actions:\n"
            "  - topic: /arm_command            # TwistStamped, m/s\n"
            "    dims: [x, y, z, roll, pitch, yaw]\n"
            f"    scale: {1.0 / control_rate!r}   # one control period: m per step\n"
            "  - topic: /gripper_command        # Float64, 0 open .. 1 closed\n"
            "    dims: [gripper]\n"
            "    initial: 0.0\n"
            "# one step per arm command, with the gripper command answering the same frame\n"
            "# (sent just after the twist): the step's decision closes at the next frame\n"
            "step: /arm_command\n"
            "source: demonstration\n")


def collect(config: CollectConfig,
            on_episode: Callable[[EpisodeReport], None] | None = None) -> CollectSummary:
    """Record the run's episodes into ``config.out``; ``on_episode`` sees each one as it ends.

    Raises :class:`CollectError` for a record directory that already holds these episode ids,
    or when a worker fails (its message included).
    """
    record_dir = Path(config.out).expanduser()
    specs = pending_episodes(config)
    _check_free_ids(record_dir, [s.episode_id(config.robot) for s in specs])
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / MAPPING_FILE).write_text(demonstration_mapping(), encoding="utf-8")
    workers = max(1, min(config.workers or os.cpu_count() or 1, len(specs)))
    summary = CollectSummary(record_dir=str(record_dir), workers=workers,
                             skipped=config.demos + config.replays - len(specs))
    if not specs:
        return summary
    started = time.perf_counter()

    def done(report: EpisodeReport) -> None:
        summary.episodes.append(report)
        if on_episode is not None:
            on_episode(report)

    with _stop_on_ctrl_c() as stop:
        if workers == 1:
            with EpisodeCollector(config) as collector:
                for spec in specs:
                    if stop.requested:
                        break
                    done(collector.run(spec))
        else:
            _run_workers(config, specs, workers, done, stop)
    summary.interrupted = stop.requested
    summary.seconds = time.perf_counter() - started
    summary.episodes.sort(key=lambda e: (KINDS.index(e.kind), e.seed))
    return summary


class _Stop:
    """Ctrl-C while collecting sets ``requested`` (instead of raising), so every episode that
    started is finished and recorded: no half-written bag. The loop passes it on to the workers
    through ``event``, which they check between episodes."""

    def __init__(self) -> None:
        self.requested = False  # set by the signal handler: a plain flag, no lock
        self.event = multiprocessing.get_context("spawn").Event()


@contextlib.contextmanager
def _stop_on_ctrl_c() -> Iterator[_Stop]:
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda *_: setattr(stop, "requested", True))
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def pending_episodes(config: CollectConfig) -> list[EpisodeSpec]:
    """The run's episodes still to record: all of them, or with ``resume`` those the record
    directory does not hold complete."""
    specs = plan_episodes(config)
    record_dir = Path(config.out).expanduser()
    if not config.resume or not record_dir.exists():
        return specs
    done = {k for k, r in EpisodeCatalog(record_dir).episodes().items()
            if r.get("status") == "complete"}
    return [s for s in specs if s.episode_id(config.robot) not in done]


def _check_free_ids(record_dir: Path, ids: list[str]) -> None:
    if not record_dir.exists():
        return
    catalog = EpisodeCatalog(record_dir).episodes()
    taken = set(catalog) | {p.name for p in record_dir.iterdir()}
    clash = [i for i in ids if i in taken]
    if clash:
        seeds = [r["collection"]["seed"] for r in catalog.values()
                 if isinstance(r.get("collection"), dict) and "seed" in r["collection"]]
        hint = f"--seed {max(seeds) + 1}" if seeds else "a --seed beyond the seeds used there"
        raise CollectError(f"{record_dir} already holds {len(clash)} of these episodes "
                           f"({', '.join(clash[:3])}{', ...' if len(clash) > 3 else ''}): "
                           f"finish an interrupted run with --resume, collect with {hint}, or "
                           f"into another --out")


# ---------------------------------------------------------------------------- workers

def _run_workers(config: CollectConfig, specs: list[EpisodeSpec], workers: int,
                 done: Callable[[EpisodeReport], None], stop: _Stop) -> None:
    """Worker w runs specs[w::workers] in its own process (spawned: no inherited GL state)."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(config, specs[w::workers], results, stop.event, w),
                         name=f"qt-ros-collect-{w}", daemon=True) for w in range(workers)]
    for p in procs:
        p.start()
    failed, running = "", set(range(workers))
    try:
        while running:
            if stop.requested:
                stop.event.set()
            try:
                kind, payload = results.get(timeout=0.5)
            except queue.Empty:
                dead = [w for w in running if procs[w].exitcode is not None]
                if dead and not stop.event.is_set():
                    failed = f"{procs[dead[0]].name} exited with status {procs[dead[0]].exitcode}"
                    break
                running -= set(dead)
                continue
            if kind == "episode":
                done(EpisodeReport(**payload))
            elif kind == "error":
                failed = payload
                break
            else:
                running.discard(payload)
    finally:  # on an error the others finish their running episode and stop
        stop.event.set()
        for p in procs:
            p.join(timeout=30)
            if p.exitcode is None:
                p.terminate()
                p.join()
    if failed:
        raise CollectError(f"a collection worker failed: {failed}")


def _worker(config: CollectConfig, specs: list[EpisodeSpec], results, stop, index: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent says when to stop (``stop``)
    # One render thread per worker: llvmpipe's default (one per core) makes workers contend.
    os.environ.setdefault("LP_NUM_THREADS", "1")
    try:
        with EpisodeCollector(config) as collector:
            for spec in specs:
                if stop.is_set():
                    break
                results.put(("episode", asdict(collector.run(spec))))
    except Exception as exc:  # noqa: BLE001 - reported by the parent, with the type
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    results.put(("finished", index))


# ---------------------------------------------------------------------------- one episode

class EpisodeCollector:
    """One simulator, one demonstrator and one recorder: ``run(spec)`` records an episode."""

    def __init__(self, config: CollectConfig):
        self.config = config
        self.sim = TabletopSim(config.sim_config())
        self.rate = DEFAULT_CONTROL_RATE
        self.period = 1.0 / self.rate  # as sim_robot_node: twist * period per tick
        self.period_ns = round(1e9 / self.rate)
        node = RecorderNodeConfig()
        self.topics = {role: "/" + getattr(node, f"{role}_topic") for role in (
            "image", "instruction", "arm_command", "gripper_command", "policy_step", "state")}
        self.topics["task_success"] = "/task_success"
        self.recorder = EpisodeRecorder(RecorderConfig(
            record_dir=Path(config.out).expanduser(), robot=config.robot,
            source="demonstration", compression=config.compression))
        # In recorder_node's order (its ROLES, then config/sim.yaml's extra_topics).
        types = {"image": node.image_type, "instruction": "std_msgs/msg/String",
                 "arm_command": node.arm_command_type,
                 "gripper_command": node.gripper_command_type,
                 "policy_step": "qt_ros/msg/PolicyStep", "state": node.state_type,
                 "task_success": "std_msgs/msg/Bool"}
        for role, topic in self.topics.items():
            self.recorder.add_topic(topic, types[role], role="" if role == "task_success"
                                    else role, latched=role == "instruction")
        self.store = self.recorder.typestore
        self.types = self.store.types
        self.instruction = self.sim.config.instruction

    def run(self, spec: EpisodeSpec) -> EpisodeReport:
        """Record the episode ``spec`` (see the module docstring for what goes into the bag)."""
        script = ScriptedDemonstrator(self.sim.config, DemonstratorConfig(
            noise=spec.noise, failure_rate=spec.failure_rate))
        script.reset(spec.seed)
        state = self.sim.reset(spec.seed)
        episode_id = spec.episode_id(self.config.robot)
        start = time.time_ns()
        self._write("instruction", start, self._msg("std_msgs/msg/String",
                                                    data=self.instruction))
        self.recorder.start(self.instruction, episode_id, now_ns=start)
        tick = start + self.period_ns // 2  # the first frame after the recording started
        gripper, ended_by = 0.0, "step limit"
        for k in range(self.config.decisions + 1):
            tick = start + self.period_ns // 2 + k * self.period_ns
            self._write_frame(tick, state)
            if k == self.config.decisions:
                break
            action = script.act(state)
            if action[7] > 0.5:
                ended_by = "terminate"
                break
            velocity = action[:3] * self.rate  # as the demonstrator node publishes it
            gripper = float(action[6])
            self._write_commands(tick, velocity, gripper)
            state = self.sim.step([*(velocity * self.period), 0.0, 0.0, 0.0,
                                   float(np.clip(gripper, 0.0, 1.0))])
        self._write_commands(tick, np.zeros(3), gripper)  # the hold the nodes send at the end
        # The sim node labels the episode once the hold has been applied (lockstep: one tick).
        self.sim.step([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, float(np.clip(gripper, 0.0, 1.0))])
        end = tick + GRIPPER_DELAY_NS + 10_000_000
        outcome = "success" if self.sim.success() else "failure"
        # The nodes end it "unknown" and the sim node labels it at once; ending it with the
        # label gives the same metadata (outcome, reward, one label) without rewriting it.
        self.recorder.end(episode_id, outcome, reason=f"demonstrator {ended_by}", now_ns=end)
        report = EpisodeReport(episode_id=episode_id, kind=spec.kind, seed=spec.seed,
                               outcome=outcome, steps=k + 1, ended_by=ended_by,
                               mistake=script.mistake or "", noise=spec.noise)
        self.recorder.catalog.update(episode_id, collection={
            "kind": spec.kind, "seed": spec.seed, "demonstrator_noise": spec.noise,
            "scripted_mistake": report.mistake, "ended_by": ended_by, "steps": report.steps})
        return report

    # -- messages, serialized as rclpy would ----------------------------------------------------

    def _msg(self, msgtype: str, **fields: Any) -> Any:
        return self.types[msgtype](**fields)

    def _header(self, t_ns: int, frame_id: str) -> Any:
        stamp = self._msg("builtin_interfaces/msg/Time", sec=t_ns // 1_000_000_000,
                          nanosec=t_ns % 1_000_000_000)
        return self._msg("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)

    def _write(self, role: str, t_ns: int, msg: Any) -> None:
        data = self.store.serialize_cdr(msg, msg.__msgtype__).tobytes()
        self.recorder.write(self.topics[role], t_ns, data)

    def _write_frame(self, t_ns: int, state) -> None:
        """What sim_robot_node publishes at a tick: image, joint states, success flag."""
        frame = self.sim.render()
        h, w = frame.shape[:2]
        self._write("image", t_ns, self._msg(
            "sensor_msgs/msg/Image", header=self._header(t_ns, "camera"), height=h, width=w,
            encoding="rgb8", is_bigendian=0, step=w * 3, data=frame.reshape(-1)))
        joints = self._msg(
            "sensor_msgs/msg/JointState", header=self._header(t_ns, "base_link"),
            name=list(JOINT_NAMES), position=self.sim.joint_positions(),
            velocity=self.sim.joint_velocities(), effort=np.zeros(0))
        self._write("state", t_ns + STATE_DELAY_NS, joints)
        self._write("task_success", t_ns + STATE_DELAY_NS,
                    self._msg("std_msgs/msg/Bool", data=bool(state.success)))

    def _write_commands(self, tick_ns: int, velocity: np.ndarray, gripper: float) -> None:
        """What demonstrator_node publishes for a frame: the arm twist, then the gripper."""
        t_arm = tick_ns + ARM_DELAY_NS
        zero = self._msg("geometry_msgs/msg/Vector3", x=0.0, y=0.0, z=0.0)
        linear = self._msg("geometry_msgs/msg/Vector3", x=float(velocity[0]),
                           y=float(velocity[1]), z=float(velocity[2]))
        twist = self._msg("geometry_msgs/msg/Twist", linear=linear, angular=zero)
        self._write("arm_command", t_arm, self._msg(
            "geometry_msgs/msg/TwistStamped", header=self._header(t_arm, "base_link"),
            twist=twist))
        self._write("gripper_command", tick_ns + GRIPPER_DELAY_NS,
                    self._msg("std_msgs/msg/Float64", data=float(gripper)))

    def close(self) -> None:
        """End an episode left running by an error as ``aborted`` (its bag stays complete);
        release the simulator."""
        self.recorder.shutdown()
        self.sim.close()

    def __enter__(self) -> EpisodeCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
