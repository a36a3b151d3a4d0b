"""ROS image bytes to RGB for every supported encoding, and PNG encoding checked by decoding."""

import base64
import struct
import zlib

import numpy as np
import pytest

from frs_control.messages import ros_image_to_rgb
from frs_vlm_bridge.images import downscale_to_max_side, encode_png, png_data_url

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, size=(5, 7, 1), dtype=np.uint8)


def _ros_bytes(pixels: np.ndarray, padding: int) -> tuple[int, bytes]:
    """Row-padded bytes of an HxWxC array, as a camera driver might publish them."""
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, padding), 0xEE, np.uint8)], axis=1)
    return padded.shape[1], padded.tobytes()


@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize(
    ("encoding", "wire", "expected"),
    [
        ("rgb8", RGB, RGB),
        ("bgr8", RGB[:, :, ::-1], RGB),
        ("rgba8", np.concatenate([RGB, ALPHA], axis=2), RGB),
        ("bgra8", np.concatenate([RGB[:, :, ::-1], ALPHA], axis=2), RGB),
        ("mono8", RGB[:, :, :1], np.repeat(RGB[:, :, :1], 3, axis=2)),
    ],
)
def test_ros_image_to_rgb(encoding, wire, expected, padding):
    step, data = _ros_bytes(np.ascontiguousarray(wire), padding)
    rgb = ros_image_to_rgb(encoding, height=5, width=7, step=step, data=data)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, expected)


def test_last_row_may_omit_its_padding():
    step, data = _ros_bytes(RGB, padding=4)
    rgb = ros_image_to_rgb("rgb8", 5, 7, step, data[:-4])
    np.testing.assert_array_equal(rgb, RGB)


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match="'16UC1'"):
        ros_image_to_rgb("16UC1", 5, 7, 14, bytes(70))
    with pytest.raises(ValueError, match="step"):
        ros_image_to_rgb("rgb8", 5, 7, 20, bytes(100))
    with pytest.raises(ValueError, match="bytes"):
        ros_image_to_rgb("rgb8", 5, 7, 21, bytes(100))


def decode_png(data: bytes) -> np.ndarray:
    """Minimal independent decoder for 8-bit RGB, unfiltered PNGs (checks every CRC)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat, header = 8, b"", None
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        payload = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat += payload
        offset += 12 + length
    assert kind == b"IEND"
    width, height, depth, color, _, _, interlace = header
    assert (depth, color, interlace) == (8, 2, 0)
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    assert not rows[:, 0].any()  # filter "None" on every row
    return rows[:, 1:].reshape(height, width, 3)


def test_png_round_trip_and_data_url():
    np.testing.assert_array_equal(decode_png(encode_png(RGB)), RGB)
    url = png_data_url(RGB)
    assert url.startswith("data:image/png;base64,")
    np.testing.assert_array_equal(decode_png(base64.b64decode(url.split(",", 1)[1])), RGB)
    with pytest.raises(ValueError):
        encode_png(RGB.astype(np.float32))


def test_downscale_by_block_mean():
    image = np.zeros((6, 8, 3), np.uint8)
    image[:2, :2] = [10, 20, 30]
    image[0, 0] = [14, 24, 34]
    small, factor = downscale_to_max_side(image, max_side=4)
    assert factor == 2 and small.shape == (3, 4, 3)
    np.testing.assert_array_equal(small[0, 0], [11, 21, 31])
    same, one = downscale_to_max_side(image, None)
    assert one == 1 and same is image
