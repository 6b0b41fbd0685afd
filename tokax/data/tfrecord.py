"""TFRecord files without TensorFlow: the framing, CRC32C, a random-access offset index.

A TFRecord file is a sequence of records, each

  uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

with masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xA282EAD8 (mod 2^32), c = crc32c(x) (Castagnoli).

  offsets, lengths = index(path)            # one pass over the headers; length CRCs checked
  record = read(path, offsets[i], lengths[i])   # the data CRC checked too
  write(path, records)

A damaged file raises CorruptRecordError (a ValueError) naming the file and the byte offset.
CRC32C comes from google-crc32c (Google's maintained C implementation; the [data] extra installs it).
"""
from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np
from etils import epath

_MASK_DELTA = 0xA282EAD8
_HEADER = 12  # uint64 length + uint32 masked CRC of it
_FOOTER = 4  # uint32 masked CRC of the data


class CorruptRecordError(ValueError):
  """A TFRecord file whose framing or checksums are wrong (the message names the file and offset)."""


try:  # optional dependency (the [data] extra); checked where a CRC is needed, not at import
  import google_crc32c
except ImportError:
  google_crc32c = None


def crc32c(data: bytes | bytearray | memoryview) -> int:
  """The CRC32C (Castagnoli, iSCSI) of `data`: crc32c(b"123456789") == 0xE3069283."""
  if google_crc32c is None:
    raise ImportError("reading TFRecord datasets checks CRC32C with google-crc32c: pip install 'tokax[data]' "
                      "(or google-crc32c)")
  return int(google_crc32c.value(bytes(data)))


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
  """TFRecord's masked CRC32C of `data`."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write(path: epath.PathLike, records: Iterable[bytes]) -> int:
  """Writes `records` as a TFRecord file (uncompressed); returns how many."""
  count = 0
  with epath.Path(path).open("wb") as f:
    for record in records:
      length = struct.pack("<Q", len(record))
      f.write(length + struct.pack("<I", masked_crc32c(length)) + bytes(record)
              + struct.pack("<I", masked_crc32c(record)))
      count += 1
  return count


def index(path: epath.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """((N,) int64 data offsets, (N,) int64 data lengths) of the records of a TFRecord file.

  Reads only the headers (seeking over the data); checks each length's CRC and that the last record
  ends at the end of the file. Raises CorruptRecordError naming the file on any mismatch.
  """
  path = epath.Path(path)
  offsets, lengths = [], []
  with path.open("rb") as f:
    size = f.seek(0, 2)
    position = 0
    while position < size:
      f.seek(position)
      header = f.read(_HEADER)
      if len(header) < _HEADER:
        raise CorruptRecordError(f"{path}: truncated record header at byte {position} (file size {size})")
      length, = struct.unpack("<Q", header[:8])
      crc, = struct.unpack("<I", header[8:])
      if crc != masked_crc32c(header[:8]):
        raise CorruptRecordError(f"{path}: the length CRC of the record at byte {position} does not match "
                                 "(corrupted or not a TFRecord file)")
      end = position + _HEADER + length + _FOOTER
      if end > size:
        raise CorruptRecordError(f"{path}: the record at byte {position} ({length} bytes) runs past the end of the "
                                 f"file ({size} bytes): truncated")
      offsets.append(position + _HEADER)
      lengths.append(length)
      position = end
  return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


def read(path: epath.PathLike, offset: int, length: int, *, verify: bool = True, file=None) -> bytes:
  """The record whose data starts at `offset` (from index()); with verify, its data CRC is checked.

  file: an open binary file of `path` to read from (else it is opened and closed here).
  """
  if file is None:
    with epath.Path(path).open("rb") as f:
      return read(path, offset, length, verify=verify, file=f)
  file.seek(offset)
  blob = file.read(length + _FOOTER)
  if len(blob) < length + _FOOTER:
    raise CorruptRecordError(f"{path}: the record at byte {offset - _HEADER} is truncated")
  data = blob[:length]
  if verify and struct.unpack("<I", blob[length:])[0] != masked_crc32c(data):
    raise CorruptRecordError(f"{path}: the data CRC of the record at byte {offset - _HEADER} does not match "
                             "(the file is corrupted)")
  return data
