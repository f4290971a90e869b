"""The ``main()`` every qt_ros node shares: spin until SIGINT/SIGTERM, then shut down safely.

A Ctrl-C in a terminal running ``ros2 launch`` reaches a node twice (from the terminal's process
group and again from launch), and rclpy's default handlers turn the second one into a
``KeyboardInterrupt`` in the middle of the shutdown work: a recorder then leaves its bag without
``metadata.yaml`` and with an unfinished MCAP file, a policy node exits without its hold command.
So rclpy's handlers are off and a signal only sets a flag; the spin loop checks it between
callbacks (bounded waits, so an idle node notices too), and the shutdown work (``teardown``) runs
once, outside any callback, with further signals ignored.

``--help`` or ``-h`` (before ``--ros-args``) prints the node's parameters with their defaults
and descriptions and exits 0: no ROS, no node, nothing created (a recorder would otherwise
make its ``record_dir``).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from qt_ros.nodes.node_parameters import parameters_help

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_node(make_node: Callable[[], Node], *, name: str,
             setup: Callable[[Node], None] | None = None,
             teardown: Callable[[Node], None] | None = None,
             errors: tuple[type[BaseException], ...] = (ValueError,),
             args: list[str] | None = None) -> int:
    """Build the node, ``setup`` it, spin until a signal or ROS shutdown, ``teardown``, return
    the exit status (2 with a one-line message when construction raises one of ``errors``).
    ``name``: the executable (``policy_node``); ``args``: the command line, ``sys.argv`` if
    None."""
    if wants_help(sys.argv if args is None else args):
        module = sys.modules.get(getattr(make_node, "__module__", ""))
        summary = ((module.__doc__ or "").strip().splitlines() or [""])[0] if module else ""
        print(parameters_help(name, summary))
        return 0
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    for sig in _SIGNALS:
        signal.signal(sig, on_signal)
    node = None
    executor = SingleThreadedExecutor()
    try:
        node = make_node()
        executor.add_node(node)
        if setup is not None:
            setup(node)
        while rclpy.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except errors as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if node is not None:
            if teardown is not None:
                teardown(node)
            executor.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def wants_help(argv: list[str]) -> bool:
    """Whether the command line asks for help: ``-h`` / ``--help`` before ``--ros-args``."""
    ours = argv[:argv.index("--ros-args")] if "--ros-args" in argv else argv
    return any(arg in ("-h", "--help") for arg in ours)
