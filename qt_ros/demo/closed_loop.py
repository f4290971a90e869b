"""The closed data loop of the demo, phase by phase (see :mod:`qt_ros.demo`): record
demonstrations, convert, train, run the policy, convert its episodes, summarize."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from qt_ros.common.files import shipped_config
from qt_ros.demo.child_processes import REPO, DemoError, Processes
from qt_ros.demo.demo_summary import plot_summary, summary_text
from qt_ros.sim.collection import demonstration_mapping


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
        profile = shipped_config("fastdds_shm.xml")
        if profile is not None:
            env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        self.env = env
        self.procs = Processes(self.out / "logs", env)
        self.sim_params = str(shipped_config("sim.yaml"))
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
                   files=(str(shipped_config("recorder.yaml")),))

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
        mapping.write_text(demonstration_mapping(self.args.control_rate))
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
                   files=(str(shipped_config("policy.yaml")),))
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
        from qt_ros.data.dataset_reader import DatasetStore

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
            from qt_ros.data.dataset_reader import DatasetStore

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
