"""Synthetic episode bags with known content, for the conversion benchmark and the tests.

``write_episode`` records an episode through :class:`~qt_ros.episodes.recorder.EpisodeRecorder` (the
recorder node's core, so the bag is exactly what the node writes), with explicit timestamps:
images at ``image_rate`` and policy steps at ``step_rate``, each step 5 ms after the image
it should be paired with. It returns the ground truth the converted dataset must hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qt_ros.episodes.recorder import EpisodeRecorder, RecorderConfig
from qt_ros.qtransformer.tokenizer import ActionTokenizer

T0 = 1_800_000_000_000_000_000  # ns, an arbitrary fixed start time
TOPICS = {"image": "/image", "instruction": "/instruction", "policy_step": "/policy_step",
          "state": "/joint_states"}


def frame_color(index: int) -> tuple[int, int, int]:
    """The constant RGB colour of frame ``index`` in "constant" images (tells frames apart)."""
    return (index * 7) % 256, (index * 13 + 50) % 256, (index * 29 + 100) % 256


def make_frame(index: int, height: int, width: int, pattern: str = "constant",
               rng: np.random.Generator | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB frame: a constant colour, or camera-like texture ("texture")."""
    if pattern == "constant":
        return np.broadcast_to(np.asarray(frame_color(index), np.uint8), (height, width, 3)).copy()
    rng = rng or np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = (np.sin(x / 17.0 + index * 0.1) + np.cos(y / 23.0)) * 60 + 128
    noise = rng.integers(0, 24, size=(height, width, 3))
    return np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)


def write_episode(record_dir: str | Path, episode_id: str, steps: int, *,
                  instruction: str = "pick up the red cube", outcome: str = "success",
                  image_size: tuple[int, int] = (48, 64), image_rate: float = 30.0,
                  step_rate: float = 10.0, compression: str = "none", state_dim: int = 0,
                  pattern: str = "constant", encoding: str = "rgb8", seed: int = 0,
                  tokenizer: ActionTokenizer | None = None) -> dict[str, Any]:
    """Record one synthetic episode bag in ``record_dir``; returns the ground truth."""
    tok = tokenizer or ActionTokenizer()
    rng = np.random.default_rng(seed)
    rec = EpisodeRecorder(RecorderConfig(record_dir=Path(record_dir), compression=compression,
                                         min_free_space_mb=0, flush_period=1.0,
                                         max_queue_mb=1e6),
                          free_space_mb=lambda: 1e9)
    ts = rec.typestore
    rec.add_topic(TOPICS["instruction"], "std_msgs/msg/String", role="instruction", latched=True)
    rec.add_topic(TOPICS["image"], "sensor_msgs/msg/Image", role="image")
    rec.add_topic(TOPICS["policy_step"], "qt_ros/msg/PolicyStep", role="policy_step")
    if state_dim:
        rec.add_topic(TOPICS["state"], "sensor_msgs/msg/JointState", role="state")
    types = ts.types
    time_cls, header_cls = types["builtin_interfaces/msg/Time"], types["std_msgs/msg/Header"]

    def header(t: int):
        return header_cls(stamp=time_cls(sec=t // 10**9, nanosec=t % 10**9), frame_id="camera")

    rec.write(TOPICS["instruction"], T0, ts.serialize_cdr(
        types["std_msgs/msg/String"](data=instruction), "std_msgs/msg/String").tobytes())
    rec.start(instruction=instruction, episode_id=episode_id, now_ns=T0)
    duration = steps / step_rate
    n_images = int(duration * image_rate) + 1
    image_times = [T0 + int(k * 1e9 / image_rate) for k in range(n_images)]
    step_times = [T0 + int(s * 1e9 / step_rate) + 5_000_000 for s in range(steps)]
    h, w = image_size
    events: list[tuple[int, str, Any]] = [(t, "image", k) for k, t in enumerate(image_times)]
    events += [(t, "step", s) for s, t in enumerate(step_times)]
    events.sort()
    bins = np.stack([rng.integers(0, b, size=steps) for b in tok.bins], axis=1)
    bins[:, tok.terminate_index] = 0
    bins[-1, tok.terminate_index] = tok.bins[tok.terminate_index] - 1
    states = rng.normal(size=(steps, state_dim)).astype(np.float64)
    image_for_step = []
    last_image = -1
    textures: dict[int, np.ndarray] = {}  # camera-like frames are slow to make: reuse 16
    for t, kind, i in events:
        if kind == "image":
            if pattern == "constant":
                frame = make_frame(i, h, w, pattern)
            else:
                frame = textures.get(i % 16)
                if frame is None:
                    frame = textures[i % 16] = make_frame(i, h, w, pattern, rng)
            data = frame if encoding != "bgr8" else frame[..., ::-1].copy()
            msg = types["sensor_msgs/msg/Image"](
                header=header(t), height=h, width=w, encoding=encoding, is_bigendian=0,
                step=w * 3, data=data.reshape(-1))
            rec.write(TOPICS["image"], t, ts.serialize_cdr(msg, "sensor_msgs/msg/Image").tobytes())
            last_image = i
        else:
            if state_dim:
                js = types["sensor_msgs/msg/JointState"](
                    header=header(t - 1_000_000), name=[f"j{k}" for k in range(state_dim)],
                    position=states[i], velocity=np.zeros(0), effort=np.zeros(0))
                rec.write(TOPICS["state"], t - 1_000_000,
                          ts.serialize_cdr(js, "sensor_msgs/msg/JointState").tobytes())
            step = types["qt_ros/msg/PolicyStep"](
                header=header(t), episode_id=episode_id, instruction=instruction,
                action_bins=bins[i].astype(np.int32), action=tok.decode(bins[i]),
                dimension_names=list(tok.names),
                q_values=np.linspace(0, 1, tok.num_dims).astype(np.float32),
                terminate=bool(i == steps - 1), inference_time=0.01, model_id="synthetic")
            rec.write(TOPICS["policy_step"], t,
                      ts.serialize_cdr(step, "qt_ros/msg/PolicyStep").tobytes())
            image_for_step.append(last_image)
    end_ns = step_times[-1] + 10_000_000
    record, _ = rec.end(outcome=outcome, reason="synthetic", now_ns=end_ns)
    return {"episode_id": episode_id, "bag": Path(record_dir) / record["bag"], "bins": bins,
            "actions": tok.decode(bins), "states": states.astype(np.float32),
            "image_for_step": np.asarray(image_for_step), "instruction": instruction,
            "outcome": outcome, "reward": record["reward"], "step_times": np.asarray(step_times)}
