"""``python -m qt_ros.demo``: the demo's command line (options, checks, exit status). The options
take their defaults from :data:`qt_ros.demo.recipe.DEFAULT`; the phases are
:mod:`qt_ros.demo.closed_loop`."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
from pathlib import Path

from qt_ros import demo as demo_package
from qt_ros.common.files import shipped_config
from qt_ros.demo.child_processes import DemoError
from qt_ros.demo.recipe import DEFAULT, Recipe
from qt_ros.sim.simulator import EPISODE_STEPS_TEXT

# option -> recipe field, for the options that override the recipe
RECIPE_OPTIONS = {
    "--task": ("task", str, "lift: pick up the red block; place: put it on the green pad"),
    "--demos": ("demos", int, "clean demonstrations to collect"),
    "--replays": ("replays", int, "noisy replays to collect (mostly failures)"),
    "--demo-noise": ("demo_noise", float, "demonstrator noise of the demonstrations, m/step"),
    "--image-size": ("image_size", int, "camera and training image size, pixels"),
    "--preset": ("preset", str, "model size: tiny | small | base"),
    "--batch-size": ("batch_size", int, "transitions per gradient step"),
    "--lr": ("lr", float, "learning rate"),
    "--train-steps": ("train_steps", int, "gradient steps of the first training"),
    "--train-minutes": ("train_minutes", float, "wall-time limit of the first training"),
    "--encoder": ("encoder", str, "instruction encoder: minilm | hash"),
    "--train-config": ("train_config", str, "qt-ros train --config file under config/ "
                                            "('': none)"),
    "--compare-config": ("compare_config", str, "qt-ros train --config file of the "
                                                "comparison's variants (--full), under config/"),
    "--tokenizer": ("tokenizer", str, "action tokenizer of the conversion, a file under "
                                      "config/ ('': qt-ros convert's default)"),
    "--select-episodes": ("select_episodes", int, "closed-loop validation episodes per "
                                                  "candidate checkpoint (0: deploy the last "
                                                  "weights)"),
    "--select-last": ("select_last", int, "candidates: each round's last K kept copies"),
    "--keep-every": ("keep_every", int, "steps between the first round's kept copies"),
    "--improve-keep-every": ("improve_keep_every", int, "steps between the second round's kept "
                                                        "copies"),
    "--ros-episodes": ("ros_episodes", int, "policy episodes through the ROS nodes"),
    "--eval-episodes": ("eval_episodes", int, "in-process qt-ros eval episodes, before and "
                                              "after the second round (0: none)"),
    "--max-steps": ("max_steps", int, "decisions a policy episode may take (0: the task's, "
                                      f"{EPISODE_STEPS_TEXT})"),
    "--improve-episodes": ("improve_episodes", int, "policy episodes recorded in-process for "
                                                    "the second round (besides the ROS ones)"),
    "--improve-steps": ("improve_steps", int, "gradient steps of the second round"),
    "--improve-minutes": ("improve_minutes", float, "wall-time limit of the second round"),
    "--improve-warmup-steps": ("improve_warmup_steps", int, "learning-rate warm-up steps of "
                                                            "the second round"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options: the recipe's settings (defaults: qt_ros/demo/recipe.py), then where
    and how it runs."""
    recipe = parser.add_argument_group("recipe (defaults: qt_ros/demo/recipe.py)")
    for option, (field, kind, text) in RECIPE_OPTIONS.items():
        default = getattr(DEFAULT, field)
        recipe.add_argument(option, type=kind, default=default, dest=field,
                            help=f"{text} (default: {default})")
    recipe.add_argument("--train-args", default=shlex.join(map(str, DEFAULT.train_args)),
                        help="further qt-ros train options, one string (default: "
                             f"{shlex.join(map(str, DEFAULT.train_args)) or 'none'})")
    recipe.add_argument("--improve", action=argparse.BooleanOptionalAction,
                        default=DEFAULT.improve,
                        help="the second round: train on from the first checkpoint with the "
                             "policy's own episodes appended, success before and after "
                             f"(default: {'on' if DEFAULT.improve else 'off'})")
    parser.add_argument("--full", action="store_true",
                        help="also the comparison table: Q-T, BC on successes, BC on all, Q-T "
                             "without conservative term, without MC bound, on a paper-like mix "
                             "(hours on 2 CPU cores)")
    parser.add_argument("--seed", type=int, default=0,
                        help="first scene seed of the data (policy episodes through ROS: "
                             "+10000, evaluations: +100000; all unseen in training)")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="torch CPU threads for training (default: 1; 0: torch's default)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes of conversion and evaluation (default: 2)")
    parser.add_argument("--out", type=Path,
                        help="output directory (default: demo_runs/<date-time>)")
    parser.add_argument("--domain-id", type=int,
                        help="ROS_DOMAIN_ID of the demo's nodes (default: a random one in "
                             "1..100, so the demo never talks to other ROS graphs)")


def recipe_from(args: argparse.Namespace) -> Recipe:
    """:data:`DEFAULT` with the options given; fields without an option keep the default."""
    overrides = {field: getattr(args, field) for field, _, _ in RECIPE_OPTIONS.values()}
    return dataclasses.replace(DEFAULT, **overrides, improve=args.improve,
                               train_args=tuple(shlex.split(args.train_args)))


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status (0 when every phase ran, 1 when a phase failed,
    2 when the options are wrong or the environment is missing, 130 when interrupted)."""
    description = demo_package.__doc__.split("\n\n")[0].split(": ", 1)[1]
    parser = argparse.ArgumentParser(prog="python -m qt_ros.demo", description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    recipe = recipe_from(args)
    problem = check_recipe(recipe) or _check_run(args)
    if problem:
        parser.error(problem)
    missing = _check_environment()
    if missing:
        print(f"qt_ros demo: {missing}", file=sys.stderr)
        return 2
    from qt_ros.demo.closed_loop import Demo

    demo = Demo(recipe, out=args.out, domain_id=args.domain_id, seed=args.seed,
                train_threads=args.train_threads, full=args.full, workers=args.workers)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return demo.run()
    except KeyboardInterrupt:
        demo.say(f"interrupted; what was done so far is in {demo.out}")
        return 130
    except DemoError as exc:
        demo.say(f"FAILED: {exc}")
        demo.say(f"logs: {demo.out / 'logs'}")
        return 1
    finally:
        demo.procs.stop_all()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def check_recipe(r: Recipe) -> str:
    """What is wrong with a recipe ("" if nothing), in the words of the options."""
    if r.task not in ("lift", "place"):
        return f"--task must be lift or place, got {r.task!r}"
    if r.demos < 1 or r.replays < 0:
        return "--demos must be >= 1 and --replays >= 0"
    if r.train_minutes <= 0 or r.train_steps < 1 or r.batch_size < 1 or r.lr <= 0:
        return "--train-minutes, --train-steps, --batch-size and --lr must be > 0"
    if r.ros_episodes < 0 or r.eval_episodes < 0 or r.max_steps < 0:
        return "--ros-episodes, --eval-episodes and --max-steps must be >= 0"
    if r.improve_episodes < 0 or r.improve_warmup_steps < 0:
        return "--improve-episodes and --improve-warmup-steps must be >= 0"
    if r.improve and (r.ros_episodes + r.improve_episodes < 1 or r.improve_steps < 1
                      or r.improve_minutes <= 0):
        return ("--improve needs policy episodes to learn from (--ros-episodes or "
                "--improve-episodes >= 1) and --improve-steps, --improve-minutes > 0; or "
                "--no-improve")
    if r.select_episodes < 0 or r.select_last < 1 or r.keep_every < 1 \
            or r.improve_keep_every < 1:
        return ("--select-episodes must be >= 0, --select-last, --keep-every and "
                "--improve-keep-every >= 1")
    if r.image_size < 8 or r.demo_noise < 0:
        return "--image-size must be >= 8 and --demo-noise >= 0"
    return ""


def _check_run(args: argparse.Namespace) -> str:
    if args.train_threads < 0 or args.workers < 1:
        return "--train-threads must be >= 0 and --workers >= 1"
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
    if shipped_config("sim.yaml") is None:
        return "config/sim.yaml not found (neither in the source tree nor in an install)"
    return ""


if __name__ == "__main__":
    sys.exit(main())
