"""``make demo``: the closed-loop demo on the embedded simulated robot.

The simulated robot (MuJoCo) and the scripted demonstrator do not exist yet, so for now this says
what the demo will do and what already works, and exits with status 2.
"""

from __future__ import annotations

import sys

PLAN = """\
qt_ros demo (not available yet: the simulated robot and scripted demonstrator are still to come)

When complete, `make demo` will, on this machine and with no GPU:
  1. start the simulated arm + camera (MuJoCo, offscreen) as a ROS 2 node,
  2. collect episodes with the scripted demonstrator and with the policy node, each recorded
     by the recorder node as one rosbag2 (MCAP) bag labelled success/failure,
  3. convert the bags into a dataset (qt-ros convert) and train a Q-Transformer offline
     (qt-ros train),
  4. run the trained policy in closed loop on the simulated robot and report its success rate.

What works today (see README.md):
  make test                      the whole test suite, real ROS 2 processes included
  source tools/env.sh            the environment: ROS 2 Kilted wheels, PyTorch, qt_ros built
  qt-ros --help                  the command line
"""


def main() -> int:
    print(PLAN, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
