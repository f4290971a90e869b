"""The comparison on the paper-like mix: one pipeline for ``make compare`` and ``make demo --full``.

``python -m qt_ros.demo.mix_comparison --out DIR [--task lift] [--demos 20 --replays 230]
[--image-size 64] [--workers 2] [--dry-run] [qt-ros compare options]`` runs, in order:

1. ``qt-ros sim collect`` of the mix (8 % clean demonstrations, 92 % noisy replays, mostly
   failures) into ``DIR/episodes`` (``--resume``: a rerun only adds what is missing);
2. ``qt-ros convert`` into ``DIR/dataset`` with the terminate-first tokenizer of the demo;
3. ``qt-ros compare`` into ``DIR/table`` with ``config/train/noisy_mix.yaml`` (docs/design.md
   3.9), plus every option this module does not know (``--steps 2000 --episodes 30``).

It stops at the first command that fails and exits with its status.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from qt_ros.common.files import shipped_config
from qt_ros.demo.child_processes import DemoError

MIX_DEMOS, MIX_REPLAYS = 20, 230  # 8 % demonstrations, the paper's share
TOKENIZER = "train/tokenizer_terminate_first.json"
CONFIG = "train/noisy_mix.yaml"


def config_option(option: str, name: str, whose: str = "the") -> list[str]:
    """``[option, config/<name>]`` (none when ``name`` is empty); a missing file is an error."""
    if not name:
        return []
    path = shipped_config(name)
    if path is None:
        raise DemoError(f"{whose} {option} file config/{name} is missing")
    return [option, str(path)]


def mix_commands(root: Path, *, task: str = "lift", image_size: int = 64, workers: int = 2,
                 collect_workers: int = 0, demos: int = MIX_DEMOS, replays: int = MIX_REPLAYS,
                 tokenizer: str = TOKENIZER, config: str = CONFIG,
                 compare_args: Sequence[str] = (), whose: str = "the") -> list[list[str]]:
    """The ``qt-ros`` argument lists of the pipeline (collect, convert, compare) into ``root``;
    ``tokenizer`` and ``config`` name files under config/ (``whose`` names them in errors)."""
    episodes, dataset = root / "episodes", root / "dataset"
    return [
        ["sim", "collect", "--out", str(episodes), "--demos", str(demos), "--replays",
         str(replays), "--task", task, "--image-size", str(image_size), "--workers",
         str(collect_workers), "--resume"],
        ["convert", str(episodes), "--out", str(dataset), "--mapping",
         str(episodes / "convert_mapping.yaml"), "--image-size", str(image_size), "--workers",
         str(workers), *config_option("--tokenizer", tokenizer, whose)],
        ["compare", str(dataset), "--out", str(root / "table"),
         *config_option("--config", config, whose), "--task", task, "--workers", str(workers),
         *compare_args],
    ]


def run_commands(commands: list[list[str]], cli: Callable[..., int]) -> int:
    """Run each argument list with ``cli``; the first nonzero status stops and is returned."""
    for args in commands:
        status = cli(*args)
        if status != 0:
            return status
    return 0


def _cli(*args: str) -> int:
    print("$ qt-ros " + shlex.join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "qt_ros.cli", *args]).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qt_ros.demo.mix_comparison",
        description="Collect the paper-like mix, convert it, and compare Q-T, BC and the "
                    "ablations on it (the options not listed go to qt-ros compare).")
    parser.add_argument("--out", type=Path, default=Path("compare_runs"),
                        help="directory of episodes/, dataset/ and table/ (default: %(default)s)")
    parser.add_argument("--task", default="lift", choices=("lift", "place"))
    parser.add_argument("--demos", type=int, default=MIX_DEMOS,
                        help="clean demonstrations (default: %(default)s)")
    parser.add_argument("--replays", type=int, default=MIX_REPLAYS,
                        help="noisy replays (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64,
                        help="camera and training resolution (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes of collection, conversion and evaluation "
                             "(default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the commands, run nothing")
    args, compare_args = parser.parse_known_args(argv)
    try:
        commands = mix_commands(args.out, task=args.task, image_size=args.image_size,
                                workers=args.workers, collect_workers=args.workers,
                                demos=args.demos, replays=args.replays,
                                compare_args=compare_args)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for command in commands:
            print("qt-ros " + shlex.join(command))
        return 0
    return run_commands(commands, _cli)


if __name__ == "__main__":
    sys.exit(main())
