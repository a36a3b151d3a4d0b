"""Camera images for a VLM request without PIL: downscaling and PNG encoding (zlib only).

ROS image messages become RGB arrays through :func:`frs_control.messages.image_msg_to_rgb`.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib

import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPE_RGB = 2


def downscale_to_max_side(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, int]:
    """Shrink an image by an integer factor (block mean) until no side exceeds ``max_side``.

    Returns the image and the factor, so pixel ``(u, v)`` of the result corresponds to
    ``((u + 0.5) * factor - 0.5, (v + 0.5) * factor - 0.5)`` of the original. Fewer pixels
    mean fewer VLM tokens and a faster request.
    """
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image, 1
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    factor = math.ceil(max(image.shape[:2]) / max_side)
    height, width = image.shape[0] // factor, image.shape[1] // factor
    cropped = image[: height * factor, : width * factor].astype(np.float32)
    blocks = cropped.reshape(height, factor, width, factor, image.shape[2])
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8), factor


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def encode_png(image: np.ndarray, compression: int = 6) -> bytes:
    """PNG bytes (8-bit RGB, no interlace) of an HxWx3 uint8 array."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR_TYPE_RGB, 0, 0, 0)
    rows = np.empty((height, 1 + width * 3), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "None" for every scanline
    rows[:, 1:] = image.reshape(height, width * 3)
    compressed = zlib.compress(rows.tobytes(), compression)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", compressed)
        + _png_chunk(b"IEND", b"")
    )


def png_data_url(image: np.ndarray, compression: int = 6) -> str:
    """``data:image/png;base64,...`` URL of an HxWx3 uint8 array, as chat APIs accept."""
    encoded = base64.b64encode(encode_png(image, compression)).decode("ascii")
    return "data:image/png;base64," + encoded
