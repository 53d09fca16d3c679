"""GZIP TFRecord shards of the patch schema, written without TensorFlow.

The converter's worker processes must not import TensorFlow (seconds and hundreds of MB per
process), so this module produces exactly what ``tf.io.TFRecordWriter(GZIP)`` reads, with
numpy and zlib only:

* ``encode_examples`` builds the ``tf.train.Example`` protobuf bytes of a batch of patches by
  hand (the wire format of example.proto/feature.proto: map entries in a fixed order; the
  float and label payloads are one ``tobytes()`` each, no Python loop per pixel);
* ``frame`` wraps records in the TFRecord framing (length, masked CRC-32C of the length,
  data, masked CRC-32C of the data). CRC-32C has no C implementation in the standard library,
  so it is computed here with numpy for all records of a batch at once (16-bit slice tables,
  each record cut into stripes processed side by side, stripes joined by the CRC's linearity);
* ``compress_chunk`` deflates framed bytes into a raw-deflate piece ending in a sync flush;
  such pieces made independently (in different processes) concatenate into one valid deflate
  stream, which ``ShardWriter`` wraps in a gzip header and trailer (CRC-32 joined with
  ``crc32_combine``). The mtime field is 0, so a shard's bytes depend on its content only.
"""
import functools
import os
import struct
import zlib
from typing import List, NamedTuple, Sequence

import numpy as np

__all__ = ["COMPRESSION", "DATASET_JSON", "GZIP_MODES", "DEFAULT_GZIP_MODE", "Chunk", "shard_name",
           "encode_examples", "serialize", "crc32c", "frame", "compress_chunk",
           "crc32_combine", "ShardWriter"]

COMPRESSION = "GZIP"
DATASET_JSON = "dataset.json"
# How the GZIP shards are deflated: mode -> (zlib level, strategy). Float32 patches compress
# only to ~0.6-0.7 of their size at any level (the mantissas are noise); run-length matching
# alone ("fast", the default) gets within 1 % of zlib level 6 ("small", what
# tf.io.TFRecordWriter uses) at ~4x its speed; "none" writes stored blocks (valid GZIP, full
# size, fastest; a shard truncated exactly at a record boundary then reads as shorter).
GZIP_MODES = {"fast": (1, zlib.Z_RLE), "small": (6, zlib.Z_DEFAULT_STRATEGY),
              "none": (0, zlib.Z_DEFAULT_STRATEGY)}
DEFAULT_GZIP_MODE = "fast"
_STRIPES = 64
_POLY_C = 0x82F63B78       # CRC-32C (Castagnoli), reflected
_POLY_IEEE = 0xEDB88320    # CRC-32 of gzip (zlib.crc32), reflected


class Chunk(NamedTuple):
    """Framed records deflated into a raw-deflate piece ending in a sync flush."""
    data: bytes
    crc32: int        # zlib.crc32 of the uncompressed framed bytes
    size: int         # their length


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord.gz"


# --- tf.train.Example wire format -----------------------------------------------------------

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1          # int64 two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _entry(key: str, feature: bytes) -> bytes:
    """One entry of the Features map (key -> Feature)."""
    return _field(1, _field(1, key.encode()) + _field(2, feature))


def _int64_feature(values) -> bytes:
    return _field(3, _field(1, b"".join(_varint(int(v)) for v in values)))


def _bytes_feature(value: bytes) -> bytes:
    return _field(1, _field(1, value))


def _head(key: str, kind: int, length: int) -> bytes:
    """Map-entry bytes of a feature up to (excluding) its payload of ``length`` bytes."""
    inner = _varint(1 << 3 | 2) + _varint(length)            # FloatList/BytesList.value
    feature = _varint(kind << 3 | 2) + _varint(len(inner) + length) + inner
    value = _varint(2 << 3 | 2) + _varint(len(feature) + length) + feature
    entry = _field(1, key.encode()) + value
    return _varint(1 << 3 | 2) + _varint(len(entry) + length) + entry


def encode_examples(images: np.ndarray, labels: np.ndarray, patient_id: str,
                    origins: np.ndarray, slices: Sequence[int] = None) -> List[bytes]:
    """Serialised ``tf.train.Example`` of each patch (schema in records.py): images [n, H, W]
    float32, labels [n, H, W] uint8, origins [n, 3] (x, y, z); ``slices`` default to z."""
    n, height, width = images.shape
    image_bytes = np.ascontiguousarray(images, "<f4").reshape(n, -1).view(np.uint8)
    label_bytes = np.ascontiguousarray(labels, np.uint8).reshape(n, -1)
    image_head = _head("image", 2, image_bytes.shape[1])
    label_head = _head("label", 1, label_bytes.shape[1])
    fixed = (_entry("height", _int64_feature([height])) + _entry("width", _int64_feature([width]))
             + _entry("patient_id", _bytes_feature(patient_id.encode())))
    out = []
    for i in range(n):
        origin = [int(v) for v in origins[i]]
        slice_index = origin[2] if slices is None else int(slices[i])
        tail = fixed + _entry("slice", _int64_feature([slice_index])) \
            + _entry("origin", _int64_feature(origin))
        body = b"".join((image_head, image_bytes[i].tobytes(), label_head,
                         label_bytes[i].tobytes(), tail))
        out.append(_varint(1 << 3 | 2) + _varint(len(body)) + body)
    return out


def serialize(image: np.ndarray, label: np.ndarray, patient_id: str, slice_index: int,
              origin) -> bytes:
    """One patch as a serialised ``tf.train.Example``."""
    return encode_examples(np.asarray(image, np.float32)[None], np.asarray(label, np.uint8)[None],
                           patient_id, np.asarray([origin], np.int64), [slice_index])[0]


# --- CRC-32C (TFRecord framing) and CRC-32 (gzip trailer) -----------------------------------

@functools.lru_cache(maxsize=None)
def _byte_table(poly: int) -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(poly), table >> 1)
    return table.astype(np.uint32)


@functools.lru_cache(maxsize=None)
def _word_tables():
    """16-bit tables: for x = state ^ word, the state after the 4 bytes is
    lo[x & 0xffff] ^ hi[x >> 16] (slice-by-4 with two bytes per lookup)."""
    t = [_byte_table(_POLY_C)]
    for _ in range(3):
        prev = t[-1]
        t.append((prev >> 8) ^ t[0][prev & 0xFF])
    v = np.arange(65536, dtype=np.uint32)
    lo = t[3][v & 0xFF] ^ t[2][v >> 8]
    hi = t[1][v & 0xFF] ^ t[0][v >> 8]
    return lo, hi


def _gf2_times(matrix: List[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _gf2_square(matrix: List[int]) -> List[int]:
    return [_gf2_times(matrix, matrix[i]) for i in range(32)]


@functools.lru_cache(maxsize=None)
def _zeros_operator(poly: int, num_bytes: int) -> tuple:
    """The linear map state -> state after ``num_bytes`` zero bytes (32 column images)."""
    one_bit = [poly] + [1 << i for i in range(31)]          # one zero bit
    result = [1 << i for i in range(32)]                    # identity
    power = _gf2_square(_gf2_square(_gf2_square(one_bit)))  # one zero byte
    n = num_bytes
    while n:
        if n & 1:
            result = [_gf2_times(power, c) for c in result]
        n >>= 1
        if n:
            power = _gf2_square(power)
    return tuple(result)


@functools.lru_cache(maxsize=None)
def _zeros_byte_tables(poly: int, num_bytes: int) -> np.ndarray:
    """[4, 256] tables applying ``_zeros_operator`` to a state byte by byte (vectorised)."""
    cols = np.array(_zeros_operator(poly, num_bytes), dtype=np.uint32)
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1          # [256, 8]
    tables = np.zeros((4, 256), np.uint32)
    for j in range(4):
        tables[j] = np.bitwise_xor.reduce(np.where(bits, cols[8 * j:8 * j + 8], 0), axis=1)
    return tables


def _apply_zeros(poly: int, num_bytes: int, states: np.ndarray) -> np.ndarray:
    t = _zeros_byte_tables(poly, num_bytes)
    return (t[0][states & 0xFF] ^ t[1][(states >> 8) & 0xFF] ^ t[2][(states >> 16) & 0xFF]
            ^ t[3][states >> 24])


def _crc32c_equal_length(data: np.ndarray) -> np.ndarray:
    """CRC-32C of each row of a uint8 [n, L] array."""
    n, length = data.shape
    words = -(-length // 4)
    per_stripe = -(-words // _STRIPES)
    padded = np.zeros((n, 4 * per_stripe * _STRIPES), np.uint8)
    padded[:, padded.shape[1] - length:] = data       # leading zeros leave a 0 state at 0
    w = padded.view("<u4").reshape(n, _STRIPES, per_stripe).transpose(2, 0, 1).copy()
    lo, hi = _word_tables()
    state, x, other = (np.zeros(n * _STRIPES, np.uint32) for _ in range(3))
    halves = x.view("<u2")
    for k in range(per_stripe):     # out= buffers: 3x faster than fancy indexing here
        np.bitwise_xor(state, w[k].ravel(), out=x)
        np.take(lo, halves[0::2], out=state)
        np.take(hi, halves[1::2], out=other)
        np.bitwise_xor(state, other, out=state)
    state = state.reshape(n, _STRIPES)
    raw = state[:, 0].copy()
    for s in range(1, _STRIPES):     # join stripes (linearity): shift by one stripe, add next
        raw = _apply_zeros(_POLY_C, 4 * per_stripe, raw) ^ state[:, s]
    init = _apply_zeros(_POLY_C, length, np.array([0xFFFFFFFF], np.uint32))
    return raw ^ init ^ np.uint32(0xFFFFFFFF)


def crc32c(records: Sequence[bytes]) -> np.ndarray:
    """CRC-32C (Castagnoli, as TFRecord uses) of each byte string; uint32 [n]."""
    out = np.zeros(len(records), np.uint32)
    by_length = {}
    for i, r in enumerate(records):
        by_length.setdefault(len(r), []).append(i)
    for length, idx in by_length.items():
        if length == 0:
            continue
        data = np.frombuffer(b"".join(records[i] for i in idx), np.uint8).reshape(len(idx),
                                                                                length)
        out[idx] = _crc32c_equal_length(data)
    return out


def _masked(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint64)
    return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).astype("<u4")


def frame(records: Sequence[bytes]) -> bytes:
    """The TFRecord byte stream of ``records`` (what an uncompressed TFRecord file holds)."""
    if not records:
        return b""
    lengths = np.array([len(r) for r in records], "<u8")
    length_bytes = lengths.view(np.uint8).reshape(-1, 8)
    length_crc = _masked(_crc32c_equal_length(length_bytes))
    data_crc = _masked(crc32c(records))
    parts = []
    for i, record in enumerate(records):
        parts += [length_bytes[i].tobytes(), length_crc[i].tobytes(), record,
                  data_crc[i].tobytes()]
    return b"".join(parts)


def compress_chunk(framed: bytes, mode: str = DEFAULT_GZIP_MODE) -> Chunk:
    """A raw-deflate piece of ``framed`` that can be concatenated with others."""
    level, strategy = GZIP_MODES[mode]
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 8, strategy)
    data = compressor.compress(framed) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return Chunk(data, zlib.crc32(framed), len(framed))


def crc32_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """zlib.crc32(a + b) from zlib.crc32(a), zlib.crc32(b) and len(b) (zlib's crc32_combine)."""
    if length_b == 0:
        return crc_a
    return _gf2_times(list(_zeros_operator(_POLY_IEEE, length_b)), crc_a) ^ crc_b


class ShardWriter:
    """Writes records round-robin into ``num_shards`` GZIP TFRecord shards of one split.

    ``write(shard, record)`` buffers one serialised record; ``write_chunk(shard, chunk)``
    appends a ``Chunk`` made elsewhere (e.g. by a worker process). Records and chunks of a
    shard appear in the order written; ``close()`` finishes every file."""

    _BUFFER_BYTES = 8 << 20

    def __init__(self, out_dir: str, split: str, num_shards: int,
                 compression: str = DEFAULT_GZIP_MODE):
        self.paths = [os.path.join(out_dir, shard_name(split, i, num_shards))
                      for i in range(num_shards)]
        self.compression = compression
        self._files = [open(p, "wb") for p in self.paths]
        for f in self._files:
            f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # gzip, mtime 0, unknown OS
        self._crc = [0] * num_shards
        self._size = [0] * num_shards
        self._pending = [[] for _ in range(num_shards)]
        self._pending_bytes = [0] * num_shards

    def write(self, shard: int, record: bytes):
        shard %= len(self._files)
        self._pending[shard].append(record)
        self._pending_bytes[shard] += len(record)
        if self._pending_bytes[shard] >= self._BUFFER_BYTES:
            self._flush(shard)

    def write_chunk(self, shard: int, chunk: Chunk):
        shard %= len(self._files)
        self._flush(shard)
        self._files[shard].write(chunk.data)
        self._crc[shard] = crc32_combine(self._crc[shard], chunk.crc32, chunk.size)
        self._size[shard] += chunk.size

    def _flush(self, shard: int):
        if self._pending[shard]:
            records, self._pending[shard], self._pending_bytes[shard] = \
                self._pending[shard], [], 0
            self.write_chunk(shard, compress_chunk(frame(records), self.compression))

    def close(self):
        for shard, f in enumerate(self._files):
            if f.closed:
                continue
            self._flush(shard)
            f.write(b"\x03\x00")   # final, empty fixed-Huffman block
            f.write(struct.pack("<II", self._crc[shard], self._size[shard] & 0xFFFFFFFF))
            f.close()
