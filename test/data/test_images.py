"""Image conversion: every encoding round-trips, padded rows and byte order are honoured, and every
malformed message fails with a message that names the encoding, the sizes and the topic."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from qt_ros.data.images import (
    ENCODINGS,
    ImageConversionError,
    compressed_to_numpy,
    image_to_numpy,
    numpy_to_compressed,
    numpy_to_image,
    to_rgb8,
)

ALL = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1"]


def _random(encoding: str, h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    if dtype == np.float32:
        return rng.normal(size=shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def _padded(array: np.ndarray, encoding: str, pad: int, big_endian: bool = False) -> Image:
    """An Image message built by hand with ``pad`` junk bytes after every row."""
    dtype, channels = ENCODINGS[encoding]
    h, w = array.shape[:2]
    row = array.astype(dtype.newbyteorder(">" if big_endian else "<")).reshape(h, -1).view(np.uint8)
    junk = np.full((h, pad), 0xAB, dtype=np.uint8)
    msg = Image()
    msg.height, msg.width, msg.encoding = h, w, encoding
    msg.is_bigendian = big_endian
    msg.step = w * channels * dtype.itemsize + pad
    msg.data = np.concatenate([row, junk], axis=1).tobytes()
    return msg


@pytest.mark.parametrize("encoding", ALL)
def test_round_trip_every_encoding(encoding):
    array = _random(encoding)
    msg = numpy_to_image(array, encoding, Image)
    assert msg.step == array.shape[1] * ENCODINGS[encoding][1] * array.dtype.itemsize
    back = image_to_numpy(msg)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("encoding", ALL)
@pytest.mark.parametrize("pad", [1, 3, 64])
def test_padded_rows_are_skipped(encoding, pad):
    array = _random(encoding, seed=pad)
    np.testing.assert_array_equal(image_to_numpy(_padded(array, encoding, pad)), array)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1"])
def test_big_endian_data(encoding):
    array = _random(encoding)
    np.testing.assert_array_equal(image_to_numpy(_padded(array, encoding, 2, big_endian=True)),
                                  array)


def test_works_on_rosbags_messages():
    # The converter reads bags with rosbags, whose messages are dataclasses with numpy data.
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    RosbagsImage = ts.types["sensor_msgs/msg/Image"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    array = _random("rgb8")
    msg = RosbagsImage(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"),
                       height=5, width=7, encoding="rgb8", is_bigendian=0, step=21,
                       data=array.reshape(-1))
    np.testing.assert_array_equal(image_to_numpy(msg), array)


def test_to_rgb8_normalises_channel_order():
    rgb = _random("rgb8")
    for encoding, stored in [("rgb8", rgb), ("bgr8", rgb[..., ::-1]),
                             ("rgba8", np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
                             ("bgra8", np.dstack([rgb[..., ::-1],
                                                  np.zeros(rgb.shape[:2], np.uint8)]))]:
        out = to_rgb8(numpy_to_image(np.ascontiguousarray(stored), encoding, Image))
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)
    mono = to_rgb8(numpy_to_image(np.full((4, 4), 1000, np.uint16), "mono16", Image))
    assert mono.shape == (4, 4, 3) and mono.dtype == np.uint8 and (mono == 1000 >> 8).all()


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_round_trip(fmt):
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.dstack([xx * 4, yy * 5, (xx + yy) * 2]).astype(np.uint8)  # smooth: JPEG-friendly
    msg = numpy_to_compressed(rgb, fmt, CompressedImage)
    assert msg.format == fmt
    back = compressed_to_numpy(msg)
    assert back.shape == rgb.shape and back.dtype == np.uint8
    if fmt == "png":
        np.testing.assert_array_equal(back, rgb)
    else:
        assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 3.0
    np.testing.assert_array_equal(to_rgb8(msg), back)


def _raises(match: str, func, *args, **kwargs) -> str:
    with pytest.raises(ImageConversionError, match=match) as info:
        func(*args, **kwargs)
    return str(info.value)


def test_unsupported_encoding_names_it_and_the_topic():
    msg = numpy_to_image(_random("rgb8"), "rgb8", Image)
    msg.encoding = "yuv422"
    text = _raises("yuv422", image_to_numpy, msg, topic="/camera/image_raw")
    assert "/camera/image_raw" in text and "rgb8" in text  # lists what is supported


@pytest.mark.parametrize("case", ["short_data", "long_data", "step_too_small", "zero_width"])
def test_size_mismatch_names_encoding_sizes_and_topic(case):
    msg = numpy_to_image(_random("mono16", h=4, w=6), "mono16", Image)
    if case == "short_data":
        msg.data = bytes(msg.data)[:-1]
    elif case == "long_data":
        msg.data = bytes(msg.data) + b"\0\0"
    elif case == "step_too_small":
        msg.step = 11
    else:
        msg.width = 0
    text = _raises("mono16", image_to_numpy, msg, topic="/wrist/depth")
    assert "/wrist/depth" in text
    assert "width=" in text and "height=" in text


def test_corrupt_jpeg_is_a_clear_error():
    msg = numpy_to_compressed(np.zeros((8, 8, 3), np.uint8), "jpeg", CompressedImage)
    msg.data = bytes(msg.data)[:20] + b"garbage" * 10
    text = _raises("could not decode", compressed_to_numpy, msg, topic="/cam/compressed")
    assert "/cam/compressed" in text and "jpeg" in text
    msg.data = b""
    _raises("empty", compressed_to_numpy, msg)


def test_building_a_message_checks_shape_and_dtype():
    _raises("does not fit encoding 'rgb8'", numpy_to_image, np.zeros((4, 4), np.uint8), "rgb8",
            Image)
    _raises("dtype float64", numpy_to_image, np.zeros((4, 4)), "32FC1", Image)
    _raises("unsupported compressed format 'bmp'", numpy_to_compressed,
            np.zeros((4, 4, 3), np.uint8), "bmp", CompressedImage)


# ------------------------------------------------------------------ malformed frames are rejected

def _float_frame(values: np.ndarray) -> Image:
    return numpy_to_image(values.astype(np.float32), "32FC1", Image)


def test_float_intensities_in_0_1_become_8_bit_grey():
    values = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    out = to_rgb8(_float_frame(values))
    assert out.shape == (2, 2, 3) and (out[..., 0] == [[0, 127], [255, 63]]).all()


@pytest.mark.parametrize("value, reason, match", [
    (np.nan, "nan", "1 NaN and 0 infinite values"),
    (np.inf, "infinite", "0 NaN and 1 infinite values"),
    (-np.inf, "infinite", "0 NaN and 1 infinite values"),
    (1.5, "range", r"values in \[0, 1.5\]"),
    (-0.01, "range", r"values in \[-0.01, 0.9"),
])
def test_a_float_frame_with_one_non_finite_or_out_of_range_value_is_rejected(value, reason, match):
    values = np.linspace(0.0, 0.99, 12, dtype=np.float32).reshape(3, 4)
    values[1, 2] = value
    with pytest.raises(ImageConversionError, match=match) as info:
        to_rgb8(_float_frame(values), topic="/camera/depth")
    assert info.value.reason == reason and "/camera/depth" in str(info.value)


def test_an_all_nan_frame_is_rejected_not_turned_black():
    with pytest.raises(ImageConversionError, match="12 NaN") as info:
        to_rgb8(_float_frame(np.full((3, 4), np.nan)))
    assert info.value.reason == "nan"


def _stream(fmt: str) -> bytes:
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.dstack([xx * 4, yy * 5, (xx + yy) * 2]).astype(np.uint8)
    return bytes(numpy_to_compressed(rgb, fmt, CompressedImage).data)


def _compressed(data: bytes, fmt: str = "jpeg") -> CompressedImage:
    msg = CompressedImage()
    msg.format, msg.data = fmt, data
    return msg


def _overwritten(data: bytes, start: int, length: int, seed: int = 0) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, length).astype(np.uint8).tobytes()
    return data[:start] + noise + data[start + length:]


JPEG, PNG = _stream("jpeg"), _stream("png")
SCAN = JPEG.index(b"\xff\xda") + 50  # inside the entropy-coded data
MALFORMED_STREAMS = {  # name -> (data, reason, words of the message)
    "jpeg cut short": (JPEG[:len(JPEG) // 2], "truncated", "no end-of-image marker"),
    "jpeg scan cut short, end marker kept": (JPEG[:-102] + JPEG[-2:], "corrupt",
                                             "Corrupt JPEG data: premature end of data segment"),
    "jpeg headers only, end marker kept": (JPEG[:SCAN - 50] + JPEG[-2:], "corrupt",
                                           "the decoder failed"),
    "jpeg scan overwritten": (_overwritten(JPEG, SCAN, 64), "corrupt", "Corrupt JPEG data"),
    "jpeg header only": (JPEG[:20], "truncated", "no end-of-image marker"),
    "png cut short": (PNG[:len(PNG) // 2], "truncated", "no IEND chunk"),
    "png byte changed": (_overwritten(PNG, len(PNG) // 2, 1), "corrupt", "libpng"),
    "not an image": (b"hello world" * 8, "format", "not a JPEG or PNG stream"),
    "empty": (b"", "truncated", "empty"),
}


@pytest.mark.parametrize("name", MALFORMED_STREAMS)
def test_a_malformed_compressed_stream_is_rejected_and_the_decoder_prints_nothing(name, capfd):
    data, reason, words = MALFORMED_STREAMS[name]
    with pytest.raises(ImageConversionError, match="could not decode compressed image") as info:
        compressed_to_numpy(_compressed(data), topic="/cam/image/compressed")
    text = str(info.value)
    assert info.value.reason == reason and words in text, text
    assert "/cam/image/compressed" in text and f"{len(data)} bytes" in text
    assert capfd.readouterr().err == ""  # libjpeg's and libpng's warnings are in the error


def test_plain_opencv_prints_the_warning_the_check_turns_into_an_error(capfd):
    # The control for the test above: the same bytes through cv2.imdecode reach the terminal
    # and decode "successfully" (the frame the policy used to act on).
    import cv2

    data, _, _ = MALFORMED_STREAMS["jpeg scan overwritten"]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    assert "Corrupt JPEG data" in capfd.readouterr().err


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_valid_streams_with_zero_padding_or_a_driver_format_string_are_accepted(fmt, capfd):
    data = JPEG if fmt == "jpeg" else PNG
    plain = compressed_to_numpy(_compressed(data, fmt))
    padded = compressed_to_numpy(_compressed(data + bytes(16), "rgb8; jpeg compressed bgr8"))
    np.testing.assert_array_equal(plain, padded)
    assert capfd.readouterr().err == ""


def test_the_decoder_capture_leaves_stderr_working(capfd):
    import sys

    compressed_to_numpy(_compressed(JPEG))
    with pytest.raises(ImageConversionError):
        compressed_to_numpy(_compressed(MALFORMED_STREAMS["jpeg scan overwritten"][0]))
    print("still here", file=sys.stderr)
    assert capfd.readouterr().err == "still here\n"
