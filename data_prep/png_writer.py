"""Grayscale PNG bytes (8 or 16-bit) with one fixed filter, 2-3x faster to write than Pillow's.

Pillow's PNG encoder picks a filter per row by trying several (adaptive filtering) and feeds zlib
in small blocks; on a 512 px radiograph that is as much work as the deflate itself. Here every
row uses the PNG "Up" filter (row minus the row above, computed by numpy in one pass) and the
whole image is deflated in one call. Radiographs are smooth vertically, so the filtered rows are
small noisy residuals: deflate's string matching finds little in them, and Huffman coding alone
(zlib's ``Z_HUFFMAN_ONLY``, the default strategy here) gives files 10-20% *smaller* than level-1
deflate in ~60% of its time (measured on phantom films and the real RG1 CR film). Any PNG reader
decodes the output to exactly the same pixels. The bytes depend only on the pixels, the zlib
level and strategy, and the zlib library.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_UP = 2
WRITER_VERSION = "up-filter-v1"  # part of the shard fingerprint: a change here redoes shards on --resume
ZLIB_STRATEGIES = {
    "default": zlib.Z_DEFAULT_STRATEGY,
    "filtered": zlib.Z_FILTERED,
    "huffman_only": zlib.Z_HUFFMAN_ONLY,
    "rle": zlib.Z_RLE,
}


def _chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, tag, data, CRC-32 of tag + data."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def _deflate(data: memoryview, level: int, strategy: int) -> bytes:
    """A zlib stream (the format PNG's IDAT holds) of ``data`` at ``level`` with ``strategy``."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 9, strategy)
    return compressor.compress(data) + compressor.flush()


def grayscale_png(image: np.ndarray, compress_level: int, strategy: str = "huffman_only") -> bytes:
    """PNG bytes of a 2-D uint8 (8-bit) or uint16 (16-bit) grayscale image, zlib ``compress_level`` and ``strategy``."""
    if strategy not in ZLIB_STRATEGIES:
        raise ValueError(f"unknown zlib strategy {strategy!r}; choose from {sorted(ZLIB_STRATEGIES)}")
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16) or 0 in image.shape:
        raise ValueError(f"expected a non-empty 2-D uint8 or uint16 image, got {image.dtype} {image.shape}")
    rows, cols = image.shape
    depth = 8 * image.dtype.itemsize
    raw = np.ascontiguousarray(image, dtype=">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(rows, -1)
    filtered = np.empty((rows, raw.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = FILTER_UP
    filtered[0, 1:] = raw[0]  # the row above the first one counts as zeros
    np.subtract(raw[1:], raw[:-1], out=filtered[1:, 1:])  # modulo 256, as the filter is defined
    header = struct.pack(">IIBBBBB", cols, rows, depth, 0, 0, 0, 0)  # color type 0: grayscale; no interlace
    return b"".join((
        PNG_SIGNATURE,
        _chunk(b"IHDR", header),
        _chunk(b"IDAT", _deflate(filtered.data, compress_level, ZLIB_STRATEGIES[strategy])),
        _chunk(b"IEND", b""),
    ))
