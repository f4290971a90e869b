"""``sensor_msgs/Image`` and ``CompressedImage`` <-> numpy: cv_bridge's semantics, no cv_bridge.

The functions take any object with the message's fields (an rclpy message, a ``rosbags``
message, a dataclass in a test), so the core converts bags without ROS installed. Building a
message needs its class: pass ``msg_type`` (e.g. ``sensor_msgs.msg.Image``).

Shapes: colour encodings give ``H x W x C`` arrays, single-channel encodings ``H x W``.
Rows may be padded (``step > width * channels * itemsize``); multi-byte data honours
``is_bigendian``. Anything inconsistent raises :class:`ImageConversionError` naming the
encoding, the sizes and the topic.
"""

from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np

# encoding -> (dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
COMPRESSED_FORMATS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}
_HOST_BIG_ENDIAN = sys.byteorder == "big"


class ImageConversionError(ValueError):
    """An image message that cannot be converted: the text says what, where and the sizes."""


def _where(topic: str) -> str:
    return f" on topic '{topic}'" if topic else ""


def image_to_numpy(msg: Any, topic: str = "") -> np.ndarray:
    """``sensor_msgs/Image`` -> array (``H x W x C``, or ``H x W`` for one channel).

    The array is a copy, so it stays valid after the message buffer is reused.
    """
    encoding = str(msg.encoding)
    if encoding not in ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding '{encoding}'{_where(topic)}; supported: "
            f"{', '.join(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    data = msg.data
    size = len(data)
    if height <= 0 or width <= 0:
        raise ImageConversionError(
            f"empty {encoding} image{_where(topic)}: width={width}, height={height}")
    if step < row_bytes or size != step * height:
        raise ImageConversionError(
            f"{encoding} image{_where(topic)} has inconsistent sizes: width={width}, "
            f"height={height}, step={step} (needs step >= {row_bytes} and "
            f"len(data) == step * height = {step * height}), len(data)={size}")
    buf = np.frombuffer(_as_bytes(data), dtype=np.uint8).reshape(height, step)
    rows = buf[:, :row_bytes]
    big_endian = bool(msg.is_bigendian)
    array = np.ascontiguousarray(rows).view(dtype.newbyteorder(">" if big_endian else "<"))
    array = array.astype(dtype, copy=True)  # native byte order, owns its memory
    return array.reshape(height, width, channels) if channels > 1 else array.reshape(height, width)


def numpy_to_image(array: np.ndarray, encoding: str, msg_type: type, header: Any = None) -> Any:
    """Array -> ``msg_type`` (a ``sensor_msgs/Image`` class) with ``encoding``, unpadded rows."""
    if encoding not in ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding '{encoding}'; supported: {', '.join(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    a = np.asarray(array)
    expected = "H x W" if channels == 1 else f"H x W x {channels}"
    shape_ok = (a.ndim == 2 and channels == 1) or (
        a.ndim == 3 and a.shape[2] == channels and (channels > 1 or a.shape[2] == 1))
    if not shape_ok:
        raise ImageConversionError(
            f"array of shape {a.shape} does not fit encoding '{encoding}' (expected {expected})")
    if a.dtype != dtype:
        raise ImageConversionError(
            f"array dtype {a.dtype} does not fit encoding '{encoding}' (expected {dtype})")
    a = np.ascontiguousarray(a)
    msg = msg_type()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = _HOST_BIG_ENDIAN and dtype.itemsize > 1
    msg.step = int(a.shape[1] * channels * dtype.itemsize)
    msg.data = a.tobytes()
    return msg


def compressed_to_numpy(msg: Any, topic: str = "") -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg or png) -> ``H x W x 3`` uint8 RGB."""
    fmt = str(msg.format)
    data = np.frombuffer(_as_bytes(msg.data), dtype=np.uint8)
    if data.size == 0:
        raise ImageConversionError(f"empty compressed image ('{fmt}'){_where(topic)}")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageConversionError(
            f"could not decode compressed image{_where(topic)}: format '{fmt}', "
            f"{data.size} bytes (corrupt or not jpeg/png)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def numpy_to_compressed(array_rgb: np.ndarray, fmt: str, msg_type: type, header: Any = None,
                        quality: int = 90) -> Any:
    """``H x W x 3`` uint8 RGB -> ``msg_type`` (a ``CompressedImage`` class), jpeg or png."""
    ext = COMPRESSED_FORMATS.get(fmt.lower())
    if ext is None:
        raise ImageConversionError(
            f"unsupported compressed format '{fmt}'; supported: {', '.join(COMPRESSED_FORMATS)}")
    a = np.asarray(array_rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ImageConversionError(
            f"compression needs an H x W x 3 uint8 RGB array, got {a.shape} {a.dtype}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else []
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(a, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageConversionError(f"OpenCV failed to encode a {a.shape} image as {fmt}")
    msg = msg_type()
    if header is not None:
        msg.header = header
    msg.format = "jpeg" if ext == ".jpg" else "png"
    msg.data = encoded.tobytes()
    return msg


def to_rgb8(msg: Any, topic: str = "") -> np.ndarray:
    """Any ``Image`` or ``CompressedImage`` -> ``H x W x 3`` uint8 RGB, the model's input.

    Mono and depth images are scaled to 8 bits and replicated to three channels (16-bit by
    >> 8, float by clipping [0, 1]); alpha is dropped.
    """
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_numpy(msg, topic)
    a = image_to_numpy(msg, topic)
    encoding = str(msg.encoding)
    if encoding in ("rgb8", "8UC3"):
        return a
    if encoding == "bgr8":
        return a[..., ::-1].copy()
    if encoding == "rgba8":
        return a[..., :3].copy()
    if encoding == "bgra8":
        return a[..., 2::-1].copy()
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype == np.float32:
        a = (np.nan_to_num(np.clip(a, 0.0, 1.0)) * 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2)


def resize_frame(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 RGB -> the training resolution ``size`` (H, W): area averaging when shrinking,
    bilinear when enlarging, no crop.

    Halving first (OpenCV's fast integer-factor path) while the image is over twice the target
    makes 640x480 -> 128x128 2x faster than one INTER_AREA resize, with the same box filtering.
    The converter and the policy both resize with this function, so the model sees camera
    frames on the robot exactly as it saw them in training.
    """
    h, w = size
    if rgb.shape[:2] == (h, w):
        return np.ascontiguousarray(rgb)
    if rgb.shape[0] < h or rgb.shape[1] < w:  # enlarging: bilinear, as the policy does
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    while rgb.shape[0] >= 2 * h and rgb.shape[1] >= 2 * w:
        rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2),
                         interpolation=cv2.INTER_AREA)
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def _as_bytes(data: Any) -> Any:
    # rclpy gives array('B') or bytes; rosbags gives a numpy uint8 array; both support the
    # buffer protocol, lists (rare, hand-built messages) do not.
    if isinstance(data, list):
        return bytes(data)
    return data
