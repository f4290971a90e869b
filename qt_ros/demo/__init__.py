"""``make demo`` (``python -m qt_ros.demo``): a Q-Transformer policy learned from scratch and run
through ROS 2 on the simulated robot.

The settings are the recipe, :mod:`qt_ros.demo.recipe` (every option's default). No GPU needed:

1. collect: ``qt-ros sim collect`` records the scripted demonstrator on the simulated robot
   in-process into the bags the ROS nodes write (two workers), labelled by the success detector;
2. convert: ``qt-ros convert`` turns the bags into a dataset;
3. train: ``qt-ros train`` with the recipe, keeping a copy of the weights every
   ``keep_every`` steps;
4. choose: ``qt-ros select`` runs the last ``select_last`` copies in closed loop on validation
   scenes of their own and copies the best to ``policy/``, the checkpoint every later phase runs
   (the last weights are a draw: docs/design.md 7.1);
5. policy through ROS: the simulated robot (``sim_robot_node``), the policy node with the
   deployed checkpoint and the recorder, real ROS 2 processes in lockstep, on scenes not in the
   data; every episode recorded as a bag and labelled by the simulator;
6. append: ``qt-ros convert`` adds the policy's episodes to the dataset;
7. evaluate: ``qt-ros eval`` (in-process, the policy node's acting code) on unseen seeds;
8. second round (``--improve``, on by default): ``qt-ros train --init`` on from the deployed
   checkpoint with the policy's own episodes in the data, keeping copies; ``qt-ros select
   --incumbent`` on validation scenes of its own, the deployed policy against the second
   round's last copies (the outcome to ``policy_round2/``: a copy replaces the first round's
   policy only when a paired sign test says it is better); then ``qt-ros eval`` on the same
   seeds;
9. with ``--full``: the comparison table (Q-T, BC, ablations: ``qt-ros compare``) on the
   paper-like mix, by :mod:`qt_ros.demo.mix_comparison` (also ``make compare``);
10. summary: ``summary.md``, ``summary.png``, ``summary.json`` and ``policy_episode.gif`` in the
    output directory; the success rate through ROS with its 95 % interval is printed at the end.

Exit status: 0 when every phase ran (whatever the success rate: the summary says it), 1 when a
phase failed, 2 for bad options or a missing environment, 130 when interrupted.
"""

from __future__ import annotations
