"""``qt-ros eval CHECKPOINT --episodes N``: closed-loop success on unseen scenes of the simulator.

The checkpoint acts through exactly the policy node's acting code (the node's loader, its control
loop and safety filter, the ``policy`` parameters of ``config/sim.yaml``) on the simulated robot,
in-process and in lockstep (no ROS), one episode per scene seed from ``--seed-offset`` on. Prints
a summary and writes ``eval.json`` (success rate with its Wilson 95 % interval, steps, how the
episodes ended, every seed's outcome, the settings), ``eval.png`` and, with ``--video K``, K
episodes as GIFs. ``--policy demonstrator`` runs the scripted demonstrator through the same
loop: the sanity anchor (it should succeed almost always). The work is
:mod:`qt_ros.evaluation`.

    qt-ros eval ckpt/ --episodes 30 --workers 2 --video 3
    qt-ros eval --policy demonstrator --episodes 20
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures.process import BrokenProcessPool

from qt_ros.common.settings import add_arguments as add_config_arguments
from qt_ros.common.settings import from_namespace
from qt_ros.evaluation.eval_config import EvalConfig, EvalError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``qt-ros eval``: one per :class:`EvalConfig` field."""
    parser.add_argument("checkpoint", nargs="?", default="",
                        help="checkpoint directory (qt-ros train output); not needed with "
                             "--policy demonstrator")
    add_config_arguments(parser, EvalConfig, skip=("checkpoint",))


def run(args: argparse.Namespace) -> int:
    """Evaluate; a user's mistake (no checkpoint, one that does not fit the simulated robot,
    no episodes) is a message and exit status 2, not a traceback."""
    from tqdm import tqdm

    from qt_ros.control.policy_config import ConfigError
    from qt_ros.evaluation import eval_report
    from qt_ros.evaluation.closed_loop_eval import check_actor, run_episodes
    from qt_ros.evaluation.eval_config import resolve_setup
    from qt_ros.sim.simulator import SimRenderError

    try:
        config = from_namespace(EvalConfig, args)
        setup = resolve_setup(config)
        model_id = check_actor(config, setup)
    except (EvalError, ConfigError) as e:
        print(f"qt-ros eval: {e}", file=sys.stderr)
        return 2
    out = config.out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"qt-ros eval: cannot create the output directory {out}: {e}; choose one with "
              f"--out", file=sys.stderr)
        return 2
    start = time.monotonic()
    wins = [0, 0]
    with tqdm(total=config.episodes, desc="eval", unit="episode", file=sys.stderr) as bar:
        def progress(outcome) -> None:
            wins[0] += outcome.success
            wins[1] += 1
            bar.set_postfix_str(f"{wins[0]}/{wins[1]} successes")
            bar.update(1)

        try:
            outcomes = run_episodes(config, setup, progress)
        except (SimRenderError, BrokenProcessPool) as e:
            print(f"qt-ros eval: the simulator or a worker failed: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("qt-ros eval: interrupted; nothing written", file=sys.stderr)
            return 130
    summary = eval_report.summarize(outcomes, config, setup, model_id, time.monotonic() - start)
    paths = [eval_report.write_json(summary, out), eval_report.plot(summary, out)]
    paths += eval_report.write_videos(outcomes, out)
    print(eval_report.summary_text(summary))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
