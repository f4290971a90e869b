"""``python -m qt_ros.demo``: the demo's command line (options, checks, exit status); the loop
itself is :mod:`qt_ros.demo.closed_loop`."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from qt_ros import demo as demo_package
from qt_ros.common.files import shipped_config
from qt_ros.demo.child_processes import DemoError
from qt_ros.demo.closed_loop import Demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (counts, training budget, task, output directory, ROS domain)."""
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
    """Run the demo; returns the exit status (0 when the whole loop ran, 1 when a phase failed,
    2 when the environment is missing, 130 when interrupted)."""
    # the description is the first sentence of the package docstring
    description = demo_package.__doc__.split("\n\n")[0].split(": ", 1)[1]
    parser = argparse.ArgumentParser(prog="python -m qt_ros.demo", description=description)
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
    if shipped_config("sim.yaml") is None:
        return "config/sim.yaml not found (neither in the source tree nor in an install)"
    return ""


if __name__ == "__main__":
    sys.exit(main())
