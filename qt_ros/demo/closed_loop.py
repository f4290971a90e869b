"""The demo's phases, in order (see :mod:`qt_ros.demo`): collect, convert, train, choose the
checkpoint to deploy (closed loop on validation scenes), the policy through ROS, append its
episodes, the second round (evaluate, train on, choose again between the deployed policy and
the second round's copies, evaluate), summary; with ``--full`` the comparison table after
them."""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from qt_ros.demo.child_processes import DemoError, Processes
from qt_ros.demo.mix_comparison import config_option, mix_commands, run_commands
from qt_ros.demo.recipe import Recipe
from qt_ros.demo.ros_episodes import RosPolicyEpisodes, node_environment, write_sim_params

ROS_SEED = 10_000  # scene seeds of the policy episodes through ROS (data: seed 0..)
RECORD_SEED = 20_000  # scene seeds of the policy episodes recorded in-process for round 2
EVAL_SEED = 100_000  # scene seeds of the in-process evaluations, before and after
VALIDATION_SEED = 50_000  # scene seeds that choose the deployed checkpoint among kept copies
VALIDATION2_SEED = 60_000  # scene seeds of the choice after the second round


class Demo:
    """Runs the phases of ``recipe``; ``run()`` returns the exit status."""

    def __init__(self, recipe: Recipe, *, out: Path | None = None, domain_id: int | None = None,
                 seed: int = 0, train_threads: int = 1, full: bool = False,
                 workers: int = 2):
        self.recipe = recipe
        self.seed = seed
        self.train_threads = train_threads
        self.full = full
        self.workers = workers
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = (out or Path("demo_runs") / stamp).resolve()
        self.domain_id = domain_id if domain_id is not None else random.randint(1, 100)
        self.started = time.monotonic()
        self.env = node_environment(self.out, self.domain_id)
        self.procs = Processes(self.out / "logs", self.env)
        self.paths = {name: self.out / name for name in (
            "episodes", "dataset", "checkpoint", "policy_episodes", "policy_episodes_fast",
            "checkpoint_round2", "policy", "selection", "policy_round2", "selection_round2",
            "eval", "comparison")}
        self.timings: dict[str, float] = {}
        self.results: dict = {"ros": [], "eval": {}}

    def say(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", flush=True)

    # ---------------------------------------------------------------- the phases

    def run(self) -> int:
        r = self.recipe
        self.out.mkdir(parents=True, exist_ok=True)
        self.params = write_sim_params(self.out / "sim_params.yaml", r.task, r.image_size)
        (self.out / "recipe.json").write_text(json.dumps(self._recipe_dict(), indent=1) + "\n")
        self.say(f"qt_ros demo: task '{r.task}'; {r.demos} demonstrations + {r.replays} noisy "
                 f"replays; train {r.preset} for {r.train_steps} steps or {r.train_minutes:g} "
                 f"min; {r.ros_episodes} policy episodes through ROS"
                 + (f"; second round {r.improve_steps} steps" if r.improve else ""))
        self.say(f"output: {self.out}  (ROS_DOMAIN_ID={self.domain_id}; logs in "
                 f"{self.out / 'logs'})")
        phases = [("collect", self.collect), ("convert", self.convert),
                  ("train", self.train)]
        if r.select_episodes:
            phases.append(("choose checkpoint", self.choose_checkpoint))
        if r.ros_episodes:
            phases += [("policy through ROS", self.run_policy_through_ros),
                       ("append policy episodes", self.append_policy_episodes)]
        if r.eval_episodes:
            phases.append(("evaluate", self.evaluate_first))
        if r.improve and r.improve_episodes:
            phases.append(("record policy episodes", self.record_policy_episodes))
        if r.improve:
            phases.append(("train round 2", self.train_round2))
            if r.select_episodes:
                phases.append(("choose after round 2", self.choose_after_round2))
            phases.append(("evaluate round 2", self.evaluate_second))
        if self.full:
            phases.append(("comparison (--full)", self.compare))
        phases.append(("summary", self.summarize))
        for k, (name, step) in enumerate(phases, 1):
            self._phase(f"{k}/{len(phases)} {name}", name, step)
        return 0

    def _phase(self, title: str, name: str, step) -> None:
        self.say(f"== {title}")
        start = time.monotonic()
        step()
        self.timings[name] = round(time.monotonic() - start, 1)
        self.say(f"   {name}: {self.timings[name]:.0f} s")

    def _cli(self, *args: str, env: dict[str, str] | None = None) -> int:
        self.say("$ qt-ros " + " ".join(args))
        command = [sys.executable, "-m", "qt_ros.cli", *args]
        return subprocess.run(command, env=env or self.env).returncode

    def _recipe_dict(self) -> dict:
        import dataclasses

        return {f.name: getattr(self.recipe, f.name) for f in dataclasses.fields(self.recipe)}

    def collect(self) -> None:
        r = self.recipe
        status = self._cli("sim", "collect", "--out", str(self.paths["episodes"]),
                           "--demos", str(r.demos), "--replays", str(r.replays),
                           "--task", r.task, "--seed", str(self.seed), "--workers",
                           str(r.collect_workers), "--image-size", str(r.image_size),
                           "--demo-noise", str(r.demo_noise), "--replay-mistake-rate",
                           str(r.replay_mistake_rate), "--max-steps", str(r.decisions),
                           "--json", str(self.out / "collect.json"))
        if status != 0:
            raise DemoError(f"qt-ros sim collect failed (status {status}); see above")

    def convert(self) -> None:
        episodes = self.paths["episodes"]
        tokenizer = config_option("--tokenizer", self.recipe.tokenizer, "the recipe's")
        status = self._cli("convert", str(episodes), "--out", str(self.paths["dataset"]),
                           "--mapping", str(episodes / "convert_mapping.yaml"),
                           "--image-size", str(self.recipe.image_size),
                           "--workers", str(self.workers), *tokenizer)
        if status != 0 or not (self.paths["dataset"] / "dataset.json").exists():
            raise DemoError(f"qt-ros convert failed (status {status}); see above")

    def _train(self, out: Path, steps: int, minutes: float, *extra: str) -> None:
        r = self.recipe
        extra = (*config_option("--config", r.train_config, "the recipe's"), *extra)
        env = dict(self.env)
        if self.train_threads > 0:
            env["OMP_NUM_THREADS"] = str(self.train_threads)
        status = self._cli("train", str(self.paths["dataset"]), "--out", str(out),
                           "--preset", r.preset, "--steps", str(steps), "--max-minutes",
                           f"{minutes:g}", "--batch-size", str(r.batch_size), "--lr",
                           f"{r.lr:g}", "--encoder", r.encoder, "--workers", "0",
                           "--save-every", str(steps), "--log-every", "50",
                           "--seed", str(self.seed), *extra, *map(str, r.train_args), env=env)
        if status != 0 or not (out / "model.safetensors").exists():
            raise DemoError(f"qt-ros train failed (status {status}); see above")

    def train(self) -> None:
        r = self.recipe
        keep = ("--keep-every", str(r.keep_every)) if r.select_episodes else ()
        self._train(self.paths["checkpoint"], r.train_steps, r.train_minutes, *keep)

    @property
    def deployed(self) -> Path:
        """The first round's checkpoint the robot runs: the one chosen in closed loop, or the
        last weights when the recipe chooses none."""
        return self.paths["policy"] if self.recipe.select_episodes else self.paths["checkpoint"]

    def choose_checkpoint(self) -> None:
        """``qt-ros select``: the first round's last kept copies on validation scenes; the one
        with the most successes is copied to ``policy/``, which every later phase uses."""
        self.results["selection"] = self._select(
            [self.paths["checkpoint"]], VALIDATION_SEED, "selection", "policy")

    def choose_after_round2(self) -> None:
        """A choice after the second round, on validation scenes of its own: the policy the
        first round deployed is the incumbent, the second round's last kept copies challenge it,
        and the outcome is copied to ``policy_round2/``, the policy the loop deploys next. A
        second round on the policy's own episodes can be worse than the first (docs/design.md
        7.1, session 13), and near the ceiling 30 episodes cannot tell policies apart, so a
        copy replaces the first round's policy only when ``qt-ros select --incumbent``'s paired
        sign test says it is better."""
        self.results["selection_round2"] = self._select(
            [self.paths["checkpoint_round2"]], VALIDATION2_SEED, "selection_round2",
            "policy_round2", "--incumbent", str(self.paths["policy"]))

    def _select(self, candidates: list[Path], seed: int, out: str, deploy: str,
                *extra: str) -> dict:
        r = self.recipe
        status = self._cli("select", *map(str, candidates), "--last", str(r.select_last),
                           "--episodes", str(r.select_episodes), "--task", r.task,
                           "--seed-offset", str(self.seed + seed), "--max-steps",
                           str(r.decisions), "--workers", str(self.workers), "--params",
                           str(self.params), "--out", str(self.paths[out]),
                           "--deploy", str(self.paths[deploy]), *extra)
        chosen = self.paths[out] / "selection.json"
        if status != 0 or not chosen.exists() or not (self.paths[deploy] / "config.json"
                                                      ).exists():
            raise DemoError(f"qt-ros select failed (status {status}); see above")
        return json.loads(chosen.read_text())

    def train_round2(self) -> None:
        r = self.recipe
        keep = ("--keep-every", str(r.improve_keep_every)) if r.select_episodes else ()
        self._train(self.paths["checkpoint_round2"], r.improve_steps, r.improve_minutes,
                    "--init", str(self.deployed),
                    "--warmup-steps", str(r.improve_warmup_steps), *keep)

    def run_policy_through_ros(self) -> None:
        r = self.recipe
        ros = RosPolicyEpisodes(self.procs, self.domain_id, self.params, self.say)
        self.results["ros"] = ros.run(self.deployed, self.paths["policy_episodes"],
                                      self.seed + ROS_SEED, r.ros_episodes, r.decisions)

    def append_policy_episodes(self) -> None:
        """The policy's labelled bags into the same dataset: the next round learns from them."""
        before = self._dataset_episodes()
        status = self._cli("convert", str(self.paths["policy_episodes"]), "--out",
                           str(self.paths["dataset"]), "--workers", str(self.workers))
        added = self._dataset_episodes() - before
        self.results["appended"] = added
        self.say(f"appended {added} policy episode(s) to the dataset ({before} before)")
        if status != 0 or added == 0:
            raise DemoError(f"qt-ros convert of the policy episodes failed (status {status}, "
                            f"{added} appended); see above")

    def record_policy_episodes(self) -> None:
        """More of the policy's own labelled episodes, recorded in-process into bags
        (:mod:`qt_ros.demo.policy_recording`, one process per worker), appended like the
        ROS ones."""
        r = self.recipe
        record_dir = self.paths["policy_episodes_fast"]
        seeds = [str(self.seed + RECORD_SEED + k) for k in range(r.improve_episodes)]
        self.say(f"recording {len(seeds)} policy episodes in-process ({self.workers} "
                 f"processes)")
        procs = []
        for w in range(min(self.workers, len(seeds))):
            name = f"policy_recording_{w}"
            self.procs.start(name, [
                sys.executable, "-m", "qt_ros.demo.policy_recording",
                str(self.deployed), str(record_dir), "--seeds", *seeds[w::self.workers],
                "--task", r.task, "--image-size", str(r.image_size), "--params",
                str(self.params), "--max-steps", str(r.decisions)])
            procs.append(name)
        statuses: dict[str, int | None] = dict.fromkeys(procs)
        rows: list[str] = []
        while None in statuses.values():
            time.sleep(10)
            statuses.update({n: self.procs.finished(n) for n, s in statuses.items()
                             if s is None})
            rows = self._recorded(procs)
            self.say(f"  {len(rows)}/{len(seeds)} recorded, {rows.count('success')} "
                     f"successful")
        if any(statuses.values()):
            raise DemoError(f"recording the policy's episodes failed (status "
                            f"{list(statuses.values())}):\n"
                            + "\n".join(self.procs.tail(name) for name in procs))
        self.results["recorded"] = {"episodes": len(rows),
                                    "successes": rows.count("success")}
        self.say(f"recorded {len(rows)} policy episodes, {rows.count('success')} successful")
        before = self._dataset_episodes()
        status = self._cli("convert", str(record_dir), "--out", str(self.paths["dataset"]),
                           "--mapping", str(record_dir / "convert_mapping.yaml"),
                           "--workers", str(self.workers))
        added = self._dataset_episodes() - before
        self.results["appended"] = self.results.get("appended", 0) + added
        self.say(f"appended {added} policy episode(s) to the dataset")
        if status != 0 or added == 0:
            raise DemoError(f"qt-ros convert of the recorded policy episodes failed (status "
                            f"{status}, {added} appended); see above")

    def _recorded(self, procs: list[str]) -> list[str]:
        """The outcomes the recording processes reported so far."""
        return [line.split(": ")[1].split(",")[0] for name in procs
                for line in (self.out / "logs" / f"{name}.log").read_text().splitlines()
                if line.startswith("recorded ")]

    def _dataset_episodes(self) -> int:
        from qt_ros.data.dataset_reader import DatasetStore

        return len(DatasetStore(self.paths["dataset"]).episodes)

    def _evaluate(self, checkpoint: Path, name: str) -> None:
        r = self.recipe
        out = self.paths["eval"] / name
        status = self._cli("eval", str(checkpoint), "--episodes", str(r.eval_episodes),
                           "--task", r.task, "--seed-offset", str(self.seed + EVAL_SEED),
                           "--max-steps", str(r.decisions), "--workers", str(self.workers),
                           "--params", str(self.params), "--out", str(out), "--video", "2")
        if status != 0 or not (out / "eval.json").exists():
            raise DemoError(f"qt-ros eval failed (status {status}); see above")
        self.results["eval"][name] = json.loads((out / "eval.json").read_text())

    def evaluate_first(self) -> None:
        self._evaluate(self.deployed, "round1")

    def evaluate_second(self) -> None:
        """The second round's last weights (what the loop's training did) and, when the choice
        after it deployed other weights than those and the first round's, the deployed ones."""
        self._evaluate(self.paths["checkpoint_round2"], "round2")
        if not self.results.get("selection_round2"):
            return
        weights = (self.paths["policy_round2"] / "model.safetensors").read_bytes()
        for name, path in (("round2", self.paths["checkpoint_round2"]),
                           ("round1", self.paths["policy"])):
            if name in self.results["eval"] and \
                    (path / "model.safetensors").read_bytes() == weights:
                self.results["eval"]["deployed"] = {**self.results["eval"][name],
                                                    "same_as": name}
                return
        self._evaluate(self.paths["policy_round2"], "deployed")

    def compare(self) -> None:
        """The comparison table (docs/design.md 3.9): Q-T, BC and ablations, trained with the
        recipe's budget on the paper-like mix of ``make compare`` (one pipeline:
        :mod:`qt_ros.demo.mix_comparison`) and evaluated on the same unseen seeds."""
        r = self.recipe
        root = self.paths["comparison"]
        commands = mix_commands(
            root, task=r.task, image_size=r.image_size, workers=self.workers,
            collect_workers=r.collect_workers, tokenizer=r.tokenizer, config=r.compare_config,
            compare_args=["--preset", r.preset, "--steps", str(r.train_steps), "--batch-size",
                          str(r.batch_size), "--lr", f"{r.lr:g}", "--encoder", r.encoder,
                          "--max-minutes", f"{r.train_minutes:g}", "--episodes",
                          str(r.eval_episodes)],
            whose="the recipe's")
        status = run_commands(commands, self._cli)
        table = root / "table" / "comparison.md"
        if status != 0 or not table.exists():
            raise DemoError(f"the comparison failed (status {status}); see above")
        self.results["comparison"] = table.read_text()
        print(self.results["comparison"], flush=True)
        if r.train_args:
            self.say("note: qt-ros compare trains without the recipe's train_args "
                     f"({shlex.join(map(str, r.train_args))})")

    # ---------------------------------------------------------------- summary

    def summarize(self) -> None:
        from qt_ros.demo.demo_summary import build_summary, write_summary

        summary = build_summary(self)
        text = write_summary(summary, self.out, self.paths, self.say)
        print(text, flush=True)
