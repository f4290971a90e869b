"""``sensor_msgs/Image`` and ``CompressedImage`` <-> numpy: cv_bridge's semantics, no cv_bridge.

The functions take any object with the message's fields (an rclpy message, a ``rosbags``
message, a dataclass in a test), so the core converts bags without ROS installed. Building a
message needs its class: pass ``msg_type`` (e.g. ``sensor_msgs.msg.Image``).

Shapes: colour encodings give ``H x W x C`` arrays, single-channel encodings ``H x W``.
Rows may be padded (``step > width * channels * itemsize``); multi-byte data honours
``is_bigendian``. Anything inconsistent raises :class:`ImageConversionError` naming the
encoding, the sizes and the topic.

A malformed frame (docs/design.md 5, "Malformed frames") is rejected, never repaired: an
unknown encoding, sizes that disagree with the data, a float frame with a NaN, an infinity or a
value outside [0, 1], a compressed stream that is not JPEG or PNG, lacks its end marker, or makes
the decoder fail or warn. libjpeg and libpng print their warnings to file descriptor 2 with no
API to catch them, so the decoder runs with that descriptor redirected (:func:`_decode`): its
messages become the error's text instead of stray lines on the terminal.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
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
# Why a frame was rejected (ImageConversionError.reason), for the policy node's statistics.
REASONS = ("encoding", "size", "nan", "infinite", "range", "format", "truncated", "corrupt")
_HOST_BIG_ENDIAN = sys.byteorder == "big"
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


class ImageConversionError(ValueError):
    """An image message that cannot be converted: the text says what, where and the sizes;
    ``reason`` is one of :data:`REASONS` (or a caller's own key, e.g. the node's
    ``resolution``)."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


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
            f"{', '.join(ENCODINGS)}", "encoding")
    dtype, channels = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    data = msg.data
    size = len(data)
    if height <= 0 or width <= 0:
        raise ImageConversionError(
            f"empty {encoding} image{_where(topic)}: width={width}, height={height}", "size")
    if step < row_bytes or size != step * height:
        raise ImageConversionError(
            f"{encoding} image{_where(topic)} has inconsistent sizes: width={width}, "
            f"height={height}, step={step} (needs step >= {row_bytes} and "
            f"len(data) == step * height = {step * height}), len(data)={size}", "size")
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
    """``sensor_msgs/CompressedImage`` (jpeg or png) -> ``H x W x 3`` uint8 RGB.

    The stream must start with the JPEG or PNG signature (``format`` is not trusted: drivers
    write "jpeg", "rgb8; jpeg compressed bgr8", ...), end with its end marker (zero padding
    after it is allowed) and decode without a single decoder warning.
    """
    fmt = str(msg.format)
    data = bytes(_as_bytes(msg.data))
    problem = _stream_problem(data)
    if problem is None:
        image, report = _decode(np.frombuffer(data, dtype=np.uint8))
        if image is None or report:
            problem = ("corrupt", f"the decoder reported '{report}'" if report
                       else "the decoder failed (corrupt or not jpeg/png)")
    if problem is not None:
        reason, why = problem
        raise ImageConversionError(
            f"could not decode compressed image{_where(topic)}: {why}; format '{fmt}', "
            f"{len(data)} bytes", reason)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _stream_problem(data: bytes) -> tuple[str, str] | None:
    """(reason, why) when ``data`` is not a complete JPEG or PNG stream, else None."""
    if not data:
        return "truncated", "empty data"
    end = data.rstrip(b"\x00")
    if data.startswith(_JPEG_SOI):
        if not end.endswith(_JPEG_EOI):
            return "truncated", "truncated JPEG (no end-of-image marker FF D9 at the end)"
    elif data.startswith(_PNG_SIGNATURE):
        if not end.endswith(_PNG_IEND):
            return "truncated", "truncated PNG (no IEND chunk at the end)"
    else:
        return "format", f"not a JPEG or PNG stream (starts with {data[:4].hex(' ')})"
    return None


_decoder_lock = threading.Lock()
_capture: tuple[int, Any] | None = None  # (pid, file) the decoder's messages are written to


def _decode(data: np.ndarray) -> tuple[np.ndarray | None, str]:
    """``cv2.imdecode`` (BGR) and the first line the decoder printed ('' when none).

    libjpeg prints the first warning of an image ("Corrupt JPEG data: ...", "Premature end of
    JPEG file") to descriptor 2 and returns the image anyway; with the descriptor pointed at a
    file during the call, that line rejects the frame instead of reaching the terminal. The
    redirection is process-wide: anything another thread writes in that window (a millisecond
    or so) is taken for the decoder's and rejects the frame, never the other way round.
    """
    global _capture
    with _decoder_lock:
        if _capture is None or _capture[0] != os.getpid():  # not shared with a forked parent
            _capture = (os.getpid(), tempfile.TemporaryFile())
        capture = _capture[1]
        capture.seek(0)
        capture.truncate()
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        lines = capture.read(4096).decode(errors="replace").strip().splitlines()
    return image, lines[0].strip() if lines else ""


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

    Mono images are scaled to 8 bits and replicated to three channels (16-bit by >> 8, float
    intensities in [0, 1] by x 255); alpha is dropped. A float frame with a NaN, an infinity or
    a value outside [0, 1] (a depth image in metres, say) is rejected, not clipped: the model
    would act on a picture that is not the scene.
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
        a = (_unit_intensities(a, f"{encoding} image{_where(topic)}") * 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2)


def _unit_intensities(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` when every value is finite and in [0, 1]; else ImageConversionError."""
    finite = np.isfinite(a)
    if not finite.all():
        nan = int(np.isnan(a).sum())
        infinite = a.size - int(finite.sum()) - nan
        raise ImageConversionError(
            f"{what} has {nan} NaN and {infinite} infinite values (of {a.size}): a frame must "
            f"be finite", "nan" if nan else "infinite")
    low, high = float(a.min()), float(a.max())
    if low < 0.0 or high > 1.0:
        raise ImageConversionError(
            f"{what} has values in [{low:g}, {high:g}]: a float frame must be intensities in "
            f"[0, 1] (depth in metres is not a camera frame)", "range")
    return a


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
