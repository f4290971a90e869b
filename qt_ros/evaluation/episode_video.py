"""Episodes as animated GIFs, for a human to watch what a policy does.

Written with Pillow, which matplotlib (a core dependency) requires, so no extra package is
needed; a GIF plays in any browser or image viewer. Each frame is the camera image as the policy
saw it, enlarged, with the step number and, on the last frames, the outcome.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCALE = 2  # 128x128 camera frames are small on a screen
LAST_FRAME_REPEAT = 8  # the final frame stays up a moment, with the outcome


def write_gif(frames: list[np.ndarray], path: Path, *, label: str, fps: float = 10.0) -> Path:
    """Write ``frames`` (H x W x 3 uint8) to ``path`` (.gif) at ``fps`` frames per second."""
    from PIL import Image, ImageDraw

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    images = []
    for step, frame in enumerate(frames):
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8)).resize(
            (frame.shape[1] * SCALE, frame.shape[0] * SCALE), Image.NEAREST)
        last = step == len(frames) - 1
        ImageDraw.Draw(image).text((4, 2), label if last else f"step {step}",
                                   fill=(255, 255, 255))
        images.extend([image] * (LAST_FRAME_REPEAT if last else 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0, optimize=False)
    return path
