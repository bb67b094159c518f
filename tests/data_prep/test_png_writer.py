"""The fixed-filter PNG writer: any reader decodes exactly the pixels written."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data_prep.png_writer import ZLIB_STRATEGIES, grayscale_png


def _decode_by_loop(png: bytes) -> np.ndarray:
    """Reference decoder for the writer's output: parse chunks, inflate, undo the Up filter row by row."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        (length,), tag = struct.unpack(">I", png[pos : pos + 4]), png[pos + 4 : pos + 8]
        data = png[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(tag + data)
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif tag == b"IDAT":
            idat += data
        pos += 12 + length
    cols, rows, depth = header[0], header[1], header[2]
    stride = cols * depth // 8
    flat = zlib.decompress(idat)
    prior = [0] * stride
    out = []
    for r in range(rows):
        line = flat[r * (stride + 1) : (r + 1) * (stride + 1)]
        assert line[0] == 2
        current = [(line[1 + i] + prior[i]) % 256 for i in range(stride)]
        out.append(current)
        prior = current
    raw = np.array(out, dtype=np.uint8)
    return raw.view(">u2").astype(np.uint16) if depth == 16 else raw


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (23, 31)])
def test_png_roundtrip_pillow_and_loop_reference(dtype: type, shape: tuple[int, int]) -> None:
    """Pillow and a pure-Python reference decoder both read back the exact pixels, all zlib levels and strategies."""
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    image = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    for level in (0, 1, 9):
        for strategy in ZLIB_STRATEGIES:
            png = grayscale_png(image, level, strategy)
            decoded = np.asarray(Image.open(io.BytesIO(png)))
            assert decoded.shape == shape and decoded.dtype == dtype
            np.testing.assert_array_equal(decoded, image)
            np.testing.assert_array_equal(_decode_by_loop(png), image)


def test_png_deterministic_and_compressed() -> None:
    """Same pixels -> same bytes; a smooth image compresses well below its raw size."""
    ramp = np.add.outer(np.arange(64), np.arange(80)).astype(np.uint8)
    assert grayscale_png(ramp, 1) == grayscale_png(ramp.copy(), 1)
    assert len(grayscale_png(ramp, 1)) < ramp.size // 4
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(grayscale_png(ramp[:, ::2], 1)))), ramp[:, ::2])


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4), np.uint8)])
def test_png_rejects_other_images(bad: np.ndarray) -> None:
    """Only non-empty 2-D uint8/uint16 images are written."""
    with pytest.raises(ValueError, match="2-D uint8 or uint16"):
        grayscale_png(bad, 1)


def test_png_rejects_unknown_strategy() -> None:
    """A zlib strategy outside the table is an error naming the choices."""
    with pytest.raises(ValueError, match="unknown zlib strategy 'fast'.*huffman_only"):
        grayscale_png(np.zeros((2, 2), np.uint8), 1, "fast")


def test_huffman_only_beats_level1_deflate_on_a_noisy_film() -> None:
    """On a smooth image with sensor noise (a radiograph's statistics) Huffman-only is the smaller file."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:256, 0:240]
    film = 120 + 60 * np.sin(rows / 40.0) * np.cos(cols / 55.0) + rng.normal(0, 3, (256, 240))
    film = np.clip(film, 0, 255).astype(np.uint8)
    assert len(grayscale_png(film, 1, "huffman_only")) < len(grayscale_png(film, 1, "default"))
