"""``make demo`` (``python -m qt_ros.demo``): the closed data loop on the simulated robot.

Everything runs as real ROS 2 processes on this machine, no GPU needed:

1. demonstrations: the simulated robot (``sim_robot_node``, MuJoCo offscreen), the recorder and
   the scripted demonstrator; ``--demos`` episodes, each recorded as one bag, ended by the
   demonstrator and labelled success/failure by the simulator's success detector;
2. ``qt-ros convert``: the demonstration bags -> a dataset (a topic mapping reads the twist and
   gripper commands, as for teleoperated demonstrations);
3. ``qt-ros train``: a small Q-Transformer, for ``--train-minutes``;
4. policy episodes: the simulator, the recorder and the policy node with the new checkpoint;
   ``--episodes`` autonomous episodes on scenes not seen in the demonstrations, labelled the same
   way;
5. ``qt-ros convert`` again: the policy's episodes are appended to the dataset (the next
   ``qt-ros train --init`` learns from its own successes and failures);
6. a summary: ``summary.txt``, ``summary.json`` and ``summary.png`` in the output directory.

The exit status is 0 when the whole loop ran, whatever the policy's success rate: a few minutes
of CPU training from a few dozen demonstrations rarely gives a good policy, and the summary says
what it got.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demos", type=int, default=30,
                        help="demonstration episodes to record (default: 30)")
    parser.add_argument("--episodes", type=int, default=10,
                        help="policy episodes to run after training (default: 10)")
    parser.add_argument("--train-minutes", type=float, default=4.0,
                        help="training wall time (default: 4 minutes)")
    parser.add_argument("--train-steps", type=int, default=100000,
                        help="most gradient steps (training usually stops at --train-minutes)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"],
                        help="model size (default: tiny)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-threads", type=int, default=1,
                        help="torch CPU threads for training (default: 1; on a busy 2-core "
                             "machine 2 threads made a step up to 18x slower; 0: torch's "
                             "default)")
    parser.add_argument("--image-size", default="64",
                        help="training resolution, N or HxW (default: 64)")
    parser.add_argument("--encoder", default="minilm", choices=["minilm", "hash"],
                        help="instruction encoder (default: minilm, the pretrained sentence "
                             "encoder; hash starts faster)")
    parser.add_argument("--task", default="lift", choices=["lift", "place"],
                        help="lift: pick up the red block; place: put it on the green pad")
    parser.add_argument("--max-steps", type=int, default=50,
                        help="control steps a policy episode may take (default: 50)")
    parser.add_argument("--control-rate", type=float, default=10.0, help="Hz (default: 10)")
    parser.add_argument("--noise", type=float, default=0.002,
                        help="demonstrator noise, m per step (default: 0.002)")
    parser.add_argument("--failure-rate", type=float, default=0.5,
                        help="share of demonstrations with a scripted mistake, so that the data "
                             "holds failures to learn from (default: 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="first scene seed (policy "
                        "episodes use seed + 10000: scenes not in the demonstrations)")
    parser.add_argument("--out", type=Path,
                        help="output directory (default: demo_runs/<date-time>)")
    parser.add_argument("--domain-id", type=int,
                        help="ROS_DOMAIN_ID of the demo's nodes (default: a random one in "
                             "1..100, so the demo never talks to other ROS graphs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qt_ros.demo",
                                     description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    add_arguments(parser)
    args = parser.parse_args(argv)
    problem = _check_args(args)
    if problem:
        parser.error(problem)
    missing = _check_environment()
    if missing:
        print(f"qt_ros demo: {missing}", file=sys.stderr)
        return 2
    demo = Demo(args)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return demo.run()
    except KeyboardInterrupt:
        demo.say(f"interrupted; what was done so far is in {demo.out}")
        return 130
    except DemoError as exc:
        demo.say(f"FAILED: {exc}")
        demo.say(f"logs of the nodes: {demo.out / 'logs'}")
        return 1
    finally:
        demo.procs.stop_all()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _check_args(args: argparse.Namespace) -> str:
    if args.demos < 1 or args.episodes < 0:
        return "--demos must be >= 1 and --episodes >= 0"
    if args.train_minutes <= 0 or args.train_steps < 1:
        return "--train-minutes must be > 0 and --train-steps >= 1"
    if args.train_threads < 0:
        return "--train-threads must be >= 0"
    if args.max_steps < 1 or args.control_rate <= 0:
        return "--max-steps must be >= 1 and --control-rate > 0"
    if not 0 <= args.failure_rate <= 1 or args.noise < 0:
        return "--failure-rate must be in [0, 1] and --noise >= 0"
    return ""


def _check_environment() -> str:
    try:
        import mujoco  # noqa: F401
    except ImportError:
        return ("MuJoCo is not installed: `make env` builds the environment, or "
                "`pip install .[sim]`")
    try:
        import rclpy  # noqa: F401

        from qt_ros.msg import EpisodeEvent  # noqa: F401
    except ImportError as exc:
        return (f"the ROS 2 environment is not active ({exc}): run `make demo`, or `make env` "
                f"and `source tools/env.sh` first")
    if _share_file("sim.yaml") is None:
        return "config/sim.yaml not found (neither in the source tree nor in an install)"
    return ""


def _share_file(name: str) -> Path | None:
    """config/<name> of the source tree, else of an installed qt_ros (share/qt_ros/config)."""
    candidates = [REPO / "config" / name]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "qt_ros" / "config" / name)
    return next((c for c in candidates if c.is_file()), None)


class DemoError(RuntimeError):
    """A step of the demo that failed; the text says which and where its log is."""


class Processes:
    """Child processes, each in its own process group with its output in a log file."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = log_dir
        self.env = env
        self.running: dict[str, tuple[subprocess.Popen, object]] = {}

    def start(self, name: str, args: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.running[name] = (proc, log)

    def check(self, *names: str) -> None:
        """Raise DemoError (with the end of its log) if one of ``names`` exited."""
        for name in names or list(self.running):
            proc, _ = self.running[name]
            if proc.poll() is not None:
                raise DemoError(f"the {name} node exited (status {proc.returncode}):\n"
                                f"{self.tail(name)}")

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def stop(self, name: str, timeout: float = 15.0) -> None:
        proc, log = self.running.pop(name)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass
        log.close()

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)


class Demo:
    """The demo's phases (see the module docstring); ``run()`` returns the exit status."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = (args.out or Path("demo_runs") / stamp).resolve()
        self.domain_id = args.domain_id if args.domain_id is not None else random.randint(1, 100)
        self.started = time.monotonic()
        env = dict(os.environ)
        env.update(ROS_DOMAIN_ID=str(self.domain_id), PYTHONUNBUFFERED="1",
                   ROS_LOG_DIR=str(self.out / "logs" / "ros"))
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        env.setdefault("MUJOCO_GL", "egl")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        profile = _share_file("fastdds_shm.xml")
        if profile is not None:
            env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        self.env = env
        self.procs = Processes(self.out / "logs", env)
        self.sim_params = str(_share_file("sim.yaml"))
        self.paths = {name: self.out / name for name in (
            "demonstrations", "policy_episodes", "dataset", "checkpoint")}
        self.results: dict[str, list[dict]] = {"demonstration": [], "policy": []}
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- output

    def say(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", flush=True)

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.say(f"qt_ros demo: task '{a.task}', {a.demos} demonstrations, {a.train_minutes:g} "
                 f"min of training ({a.preset} model), {a.episodes} policy episodes")
        self.say(f"output: {self.out}  (ROS_DOMAIN_ID={self.domain_id}; node logs in "
                 f"{self.out / 'logs'})")
        self._phase("1/6 demonstrations", self.record_demonstrations)
        self._phase("2/6 convert", self.convert_demonstrations)
        self._phase("3/6 train", self.train)
        if a.episodes:
            self._phase("4/6 policy episodes", self.run_policy)
            self._phase("5/6 convert policy episodes", self.convert_policy_episodes)
        self._phase("6/6 summary", self.summarize)
        return 0

    def _phase(self, name: str, step) -> None:
        self.say(f"== {name}")
        start = time.monotonic()
        step()
        self.timings[name.split(" ", 1)[1]] = round(time.monotonic() - start, 1)

    def _node(self, name: str, module: str, *params: str, files: tuple[str, ...] = ()) -> None:
        args = [sys.executable, "-m", f"qt_ros.nodes.{module}", "--ros-args"]
        for f in (*files, self.sim_params):
            args += ["--params-file", f]
        for p in params:
            args += ["-p", p]
        self.procs.start(name, args)

    def _start_sim_and_recorder(self, record_dir: Path, source: str, seed: int) -> None:
        a = self.args
        self._node("sim_robot", "sim_robot_node", f"task:={a.task}", f"seed:={seed}",
                   f"control_rate:={a.control_rate}")
        self._node("recorder", "recorder_node", f"record_dir:={record_dir}",
                   f"source:={source}", "min_free_space_mb:=200.0",
                   files=(str(_share_file("recorder.yaml")),))

    def _wait_ready(self, driver, actor: str) -> None:
        from std_srvs.srv import SetBool, Trigger

        from qt_ros.srv import StartEpisode

        alive = self.procs.check
        driver.wait_for_service(Trigger, "sim_robot/reset", 90, alive)
        driver.wait_for_service(StartEpisode, "recorder/start_episode", 90, alive)
        if actor == "policy":
            self.say("loading the policy (torch, checkpoint, instruction encoder)...")
            driver.wait_active("policy", 180, alive)
        driver.wait_for_service(SetBool, f"{actor}/enable", 90, alive)
        time.sleep(1.0)  # the latched instruction reaches the recorder and the policy

    def _episodes(self, actor: str, count: int, max_seconds: float) -> None:
        from qt_ros.nodes.episode_driver import DriverError, EpisodeDriver

        source = "demonstration" if actor == "demonstrator" else "policy"
        with EpisodeDriver(self.domain_id) as driver:
            try:
                self._wait_ready(driver, actor)
                for k in range(count):
                    result = driver.run_episode(actor, max_seconds)
                    self.procs.check()
                    self.results[source].append(asdict(result))
                    wins = sum(r["outcome"] == "success" for r in self.results[source])
                    self.say(f"{source} {k + 1:3d}/{count}: {result.outcome:8s} "
                             f"{result.seconds:5.1f} s, ended by {result.ended_by:10s} "
                             f"({result.scene.split(':')[0]}; {wins}/{k + 1} successes)")
            except DriverError as exc:
                self.procs.check()
                raise DemoError(str(exc)) from exc

    def record_demonstrations(self) -> None:
        a = self.args
        self._start_sim_and_recorder(self.paths["demonstrations"], "demonstration", a.seed)
        self._node("demonstrator", "demonstrator_node", f"task:={a.task}",
                   f"control_rate:={a.control_rate}", f"seed:={a.seed}", f"noise:={a.noise}",
                   f"failure_rate:={a.failure_rate}")
        # A demonstration takes 2-4 s (lift) or 3-6 s (place) of simulated time at 10 Hz.
        max_seconds = (80 if a.task == "place" else 50) / a.control_rate
        self._episodes("demonstrator", a.demos, max_seconds)
        self.procs.stop_all()

    def _cli(self, *args: str, env: dict[str, str] | None = None) -> int:
        command = [sys.executable, "-m", "qt_ros.cli", *args]
        self.say("$ qt-ros " + " ".join(args))
        return subprocess.run(command, env=env or self.env).returncode

    def convert_demonstrations(self) -> None:
        # Demonstrations carry commands, not policy steps: map them like teleoperation.
        mapping = self.out / "demo_mapping.yaml"
        mapping.write_text(
            "# qt-ros convert --mapping: the demonstrator's commands as actions\n"
            "actions:\n"
            "  - topic: /arm_command            # TwistStamped, m/s\n"
            "    dims: [x, y, z, roll, pitch, yaw]\n"
            f"    scale: {1.0 / self.args.control_rate!r}   # one control period: m per step\n"
            "  - topic: /gripper_command        # Float64, 0 open .. 1 closed\n"
            "    dims: [gripper]\n"
            "    initial: 0.0\n"
            "step: /arm_command                # one step per arm command\n"
            "source: demonstration\n")
        status = self._cli("convert", str(self.paths["demonstrations"]), "--out",
                           str(self.paths["dataset"]), "--mapping", str(mapping),
                           "--image-size", self.args.image_size, "--workers", "1")
        if status == 2 or not (self.paths["dataset"] / "dataset.json").exists():
            raise DemoError(f"qt-ros convert failed (status {status}); see the messages above")
        if status == 1:
            self.say("some demonstration bags could not be converted (see above); going on "
                     "with the others")

    def train(self) -> None:
        a = self.args
        env = dict(self.env)
        if a.train_threads > 0:
            env["OMP_NUM_THREADS"] = str(a.train_threads)
        status = self._cli("train", str(self.paths["dataset"]), "--out",
                           str(self.paths["checkpoint"]), "--preset", a.preset,
                           "--max-minutes", f"{a.train_minutes:g}", "--steps",
                           str(a.train_steps), "--batch-size", str(a.batch_size),
                           "--workers", "0", "--encoder", a.encoder, "--save-every",
                           str(a.train_steps), "--log-every", "25", "--seed", str(a.seed),
                           env=env)
        if status != 0 or not (self.paths["checkpoint"] / "model.safetensors").exists():
            raise DemoError(f"qt-ros train failed (status {status}); see the messages above")

    def run_policy(self) -> None:
        a = self.args
        self._start_sim_and_recorder(self.paths["policy_episodes"], "autonomous",
                                     a.seed + 10000)
        self._node("policy", "policy_node", f"checkpoint:={self.paths['checkpoint']}",
                   f"control_rate:={a.control_rate}",
                   files=(str(_share_file("policy.yaml")),))
        self._episodes("policy", a.episodes, a.max_steps / a.control_rate + 0.3)
        self.procs.stop_all()

    def convert_policy_episodes(self) -> None:
        status = self._cli("convert", str(self.paths["policy_episodes"]), "--out",
                           str(self.paths["dataset"]), "--workers", "1")
        if status != 0:
            self.say(f"converting the policy episodes ended with status {status} (see above); "
                     f"the demo goes on")

    # ---------------------------------------------------------------- summary

    def summarize(self) -> None:
        summary = self.summary()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        text = summary_text(summary)
        (self.out / "summary.txt").write_text(text + "\n")
        try:
            plot_summary(summary, self.out / "summary.png", self._frames())
        except Exception as exc:  # noqa: BLE001 - the plot must not fail the demo
            self.say(f"could not draw summary.png: {type(exc).__name__}: {exc}")
        print(text, flush=True)

    def _frames(self) -> list[tuple[str, object]]:
        """First and last training frame of the first demonstration and policy episode."""
        if not (self.paths["dataset"] / "dataset.json").exists():
            return []
        from qt_ros.data.dataset_store import DatasetStore

        store = DatasetStore(self.paths["dataset"])
        frames = []
        for source, name in (("demonstration", "demonstration"), ("autonomous", "policy")):
            index = next((i for i, e in enumerate(store.episodes) if e["source"] == source),
                         None)
            if index is not None:
                video = store.episode_field(index, "frames")
                outcome = store.episodes[index].get("outcome", "")
                frames += [(f"{name}: first", video[0]), (f"{name}: last ({outcome})",
                                                          video[-1])]
        return frames

    def summary(self) -> dict:
        def rate(rows: list[dict]) -> dict:
            wins = sum(r["outcome"] == "success" for r in rows)
            return {"episodes": len(rows), "successes": wins,
                    "success_rate": wins / len(rows) if rows else None,
                    "ended_by_terminate": sum(r["ended_by"] == "terminate" for r in rows)}

        metrics_path = self.paths["checkpoint"] / "metrics.jsonl"
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()
                   if line.strip()] if metrics_path.exists() else []
        config_path = self.paths["checkpoint"] / "config.json"
        step = json.loads(config_path.read_text()).get("step") if config_path.exists() else None
        dataset = {}
        if (self.paths["dataset"] / "dataset.json").exists():
            from qt_ros.data.dataset_store import DatasetStore

            store = DatasetStore(self.paths["dataset"])
            dataset = {"episodes": len(store.episodes), "steps": store.num_steps,
                       "image_size": list(store.image_size), "state_dim": store.state_dim}
        return {
            "task": self.args.task, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                 for k, v in vars(self.args).items()},
            "demonstrations": rate(self.results["demonstration"]),
            "policy": rate(self.results["policy"]),
            "training": {"steps": step, "preset": self.args.preset,
                         "final_loss": metrics[-1]["loss"] if metrics else None,
                         "metrics": [{"step": m["step"], "loss": m["loss"],
                                      "q_taken": m.get("q_taken")} for m in metrics]},
            "dataset": dataset,
            "episodes": self.results,
            "paths": {**{k: str(v) for k, v in self.paths.items()},
                      "summary_png": str(self.out / "summary.png"),
                      "logs": str(self.out / "logs")},
            "seconds": {**self.timings, "total": round(time.monotonic() - self.started, 1)},
            "domain_id": self.domain_id,
        }


def summary_text(s: dict) -> str:
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


if __name__ == "__main__":
    sys.exit(main())
