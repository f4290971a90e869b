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
