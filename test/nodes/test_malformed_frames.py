"""Malformed frames into enabled policy nodes in their own processes: no command from any of
them, each counted by the node, nothing on stderr outside the node's logger, and a node fed
only malformed frames holds as a node fed nothing does.

The storm is the fault suite's (``qt-ros bench faults --only frames``), run small: the test
checks the suite's counts as well as the nodes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
from geometry_msgs.msg import TwistStamped
from policy_node_support import SENSOR, make_checkpoint, policy_node_args
from sensor_msgs.msg import Image

from qt_ros.data.images import numpy_to_image
from qt_ros.faults import frame_faults
from qt_ros.msg import PolicyStep
from qt_ros.nodes.synthetic_camera import make_frames

pytestmark = [pytest.mark.ros, pytest.mark.slow]

PERIOD = 0.1  # control_rate 10 Hz
W, H = 160, 120


def test_a_storm_of_malformed_frames_commands_nothing_and_each_is_counted(env):
    args = argparse.Namespace(frames_per_kind=15, frame_rate=30.0, gap=0.3, seed=3,
                              domain_id=int(env["ROS_DOMAIN_ID"]))
    report = frame_faults.run(args)
    assert "error" not in report, report
    assert set(report["kinds"]) >= {"nan_32fc1", "inf_32fc1", "corrupt_jpeg", "truncated_jpeg",
                                    "short_data", "wrong_resolution", "unsupported_encoding"}
    for kind, counts in report["kinds"].items():
        assert counts["commands"] == counts["policy_steps"] == 0, (kind, counts)
        # Best effort, depth 1: a frame may be lost on the way, none may go uncounted.
        assert 0.8 * counts["sent"] <= counts["rejected"] <= counts["sent"], (kind, counts)
        assert counts["stderr_lines"] == 0, (kind, counts)
    for transport, node in report["nodes"].items():
        assert node["exit"] == 0 and node["stderr_lines"] == 0, (transport, node)
        assert set(node["rejected"]) == {c["reason"] for c in report["kinds"].values()
                                         if c["transport"] == transport}
    # The same nodes command on valid frames: the zeros above are rejections.
    for transport, counts in report["valid"].items():
        assert counts["commands"] >= 5 and counts["policy_steps"] >= 5, (transport, counts)


def test_only_malformed_frames_hold_once_as_no_frames_do(spawn, env, probe, tmp_path):
    arm = probe.collect(TwistStamped, "arm_command")
    steps = probe.collect(PolicyStep, "policy_step")
    probe.instruction("pick up the red block")
    camera = probe.publisher(Image, "image", SENSOR)
    policy = spawn(policy_node_args(make_checkpoint(tmp_path / "ckpt"), start_enabled=True,
                                    image_timeout=0.5, image_width=W, image_height=H),
                   env=env, name="policy")
    good = [numpy_to_image(f, "rgb8", Image) for f in make_frames(W, H)]
    nan = numpy_to_image(np.full((H, W), np.nan, np.float32), "32FC1", Image)

    def send(frames, seconds=None, until=None):
        deadline = time.monotonic() + (seconds or 90)
        i = 0
        while time.monotonic() < deadline and not (until and until()):
            assert policy.alive(), policy.output()
            camera.publish(frames[i % len(frames)])
            i += 1
            time.sleep(1 / 30)

    send(good, until=lambda: len(arm) >= 10)
    assert len(arm) >= 10, f"no commands from valid frames:\n{policy.output()[-3000:]}"
    switch = time.monotonic()
    send([nan], seconds=2.0)
    after = [(t, m) for t, m in list(arm) if t > switch]
    holds = [t for t, m in after if _is_hold(m)]
    assert len(holds) == 1 and after[-1][0] == holds[0], \
        f"expected commands, then exactly one hold, then silence; got {after}"
    assert switch + 0.5 - 1 / 30 <= holds[0] <= switch + 0.5 + PERIOD + 0.2, \
        f"hold {holds[0] - switch:.3f} s after the frames turned malformed"
    assert not [t for t, _ in list(steps) if t > switch + PERIOD], "a step from a NaN frame"
    out = policy.output()
    assert out.count("holding: no image for more than 0.5 s") == 1, out
    assert "dropped a malformed frame: 32FC1 image on topic '/image' has 19200 NaN" in out, out


def _is_hold(msg: TwistStamped) -> bool:
    t = msg.twist
    return [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z] == [0.0] * 6
