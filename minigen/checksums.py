"""The integrity of a checkpoint file: a header checked before HDF5 reads it, and a digest of
the content inside it. minigen.checkpoint writes and checks both.

The header sits in HDF5's user block (which HDF5 skips): the length and SHA-256 of the HDF5
bytes after it, and the offset, size and CRC-32 of every array's stored bytes, with the
header's own SHA-256. It is checked before HDF5 parses a byte, so HDF5 never meets a damaged
file (on damaged metadata it can loop forever) and the damaged array is still named. Inside
the file, every array carries HDF5's Fletcher-32 checksum and the root attributes the SHA-256
of every part of the content (each group's attributes, each array's dtype, shape and bytes),
which a reader with h5py alone can check too.
"""
from __future__ import annotations

import hashlib
import json
import zlib

import h5py
import numpy as np

HEADER_MAGIC = b"minigen checkpoint\n"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Root attributes of the content digest: CHECKSUMS is a JSON object holding the SHA-256 of each
# part of the content; DIGEST is the SHA-256 of that JSON text.
CHECKSUMS, DIGEST = "checksums", "digest"


class Refused(Exception):
    """What is wrong with a file, as the rest of a sentence that starts with its path."""


def members(group: h5py.Group):
    """(name, group or dataset) pairs; a member whose header is unreadable raises OSError
    (h5py itself yields None for it)."""
    for name, member in group.items():
        if member is None:
            raise OSError(f"cannot open '{group.name.rstrip('/')}/{name}'")
        yield name, member


# --- the header ---------------------------------------------------------------------------
def header_size(length: int) -> int:
    """HDF5's user block is 512 bytes or a larger power of two."""
    size = 512
    while size < length:
        size *= 2
    return size


def array_regions(file: h5py.File) -> list:
    """[name, offset, size] of the stored bytes of every array (each chunk of it) in the file;
    tiny arrays kept inside HDF5's object headers have none (the SHA-256 covers them)."""
    regions = []

    def visit(name: str, item) -> None:
        if not isinstance(item, h5py.Dataset):
            return
        if item.chunks:
            for index in range(item.id.get_num_chunks()):
                info = item.id.get_chunk_info(index)
                regions.append([name, info.byte_offset, info.size])
        elif item.id.get_offset() is not None:
            regions.append([name, item.id.get_offset(), item.id.get_storage_size()])
    file.visititems(visit)
    return regions


def with_header(image: bytes, regions: list, format_version: int) -> bytes:
    """The file: the header (padded to a user block) followed by the HDF5 image."""
    manifest = json.dumps({"format_version": format_version, "length": len(image),
                           "sha256": hashlib.sha256(image).hexdigest(),
                           "arrays": [[name, offset, size,
                                       zlib.crc32(image[offset:offset + size])]
                                      for name, offset, size in regions]},
                          separators=(",", ":")).encode()
    header = HEADER_MAGIC + manifest + b"\n" + hashlib.sha256(manifest).hexdigest().encode()
    header += b"\n"
    return header.ljust(header_size(len(header)), b" ") + image


def check_header(data: bytes, newest_version: int, reader: str) -> bool:
    """Check the header and the HDF5 bytes after it; False for a file without one (format
    version 1, or another program's HDF5 file). Raises Refused naming what is wrong: a newer
    format than `newest_version` (reader: the minigen version reading), the header, the
    length, an array, or HDF5's structure between the arrays."""
    if not data.startswith(HEADER_MAGIC):
        return False
    lines = data[len(HEADER_MAGIC):len(HEADER_MAGIC) + (1 << 24)].split(b"\n", 2)
    manifest = None
    if len(lines) == 3 and hashlib.sha256(lines[0]).hexdigest().encode() == lines[1]:
        manifest = json.loads(lines[0])
    if not isinstance(manifest, dict):
        raise Refused("is truncated or damaged: its header (the first bytes, which hold the "
                      "checksums) is cut short or damaged; use an earlier checkpoint")
    if manifest["format_version"] > newest_version:
        raise Refused(f"has checkpoint format version {manifest['format_version']}, but "
                      f"minigen {reader} reads versions up to {newest_version}; upgrade "
                      "minigen to load it")
    image = data[header_size(len(HEADER_MAGIC) + len(lines[0]) + len(lines[1]) + 2):]
    if len(image) < manifest["length"]:
        raise Refused(f"is truncated or damaged: it holds {len(image):,} bytes after its "
                      f"header, but was saved with {manifest['length']:,}; it was probably cut "
                      "short by a crash or an incomplete copy, use an earlier checkpoint")
    if len(image) > manifest["length"]:
        raise Refused(f"is damaged: it holds {len(image):,} bytes after its header, but was "
                      f"saved with {manifest['length']:,} (it was changed after saving); use "
                      "an earlier checkpoint")
    if hashlib.sha256(image).hexdigest() == manifest["sha256"]:
        return True
    damaged = list(dict.fromkeys(name for name, offset, size, crc in manifest["arrays"]
                                 if zlib.crc32(image[offset:offset + size]) != crc))
    if damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise Refused(f"is damaged: the array {damaged[0]} fails its checksum{more}; use an "
                      "earlier checkpoint")
    raise Refused("is damaged: its HDF5 structure (the bytes between the arrays: names, "
                  "shapes, attributes such as the step and config) does not match its SHA-256; "
                  "use an earlier checkpoint")


# --- the content digest inside the HDF5 file -----------------------------------------------
class _DamagedArray(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _value_bytes(value) -> bytes:
    """A canonical byte string of an attribute value (str, bytes, NumPy scalar or array)."""
    if isinstance(value, str):
        return b"str:" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return b"bytes:" + value
    array = np.asarray(value)
    if array.dtype == object:
        return b"object:" + repr(array.tolist()).encode("utf-8", "surrogatepass")
    return f"{array.dtype.str}{array.shape}:".encode() + array.tobytes()


def _attributes_sum(attrs, skip: tuple = ()) -> str:
    digest = hashlib.sha256()
    for name in sorted(attrs.keys()):
        if name not in skip:
            digest.update(name.encode("utf-8", "surrogatepass") + b"\0")
            digest.update(_value_bytes(attrs[name]) + b"\0")
    return digest.hexdigest()


def content_checksums(file: h5py.File, arrays: dict) -> dict[str, str]:
    """SHA-256 of every part of the content, by HDF5 path: "GROUP@" for a group's attributes,
    "DATASET" for an array (dtype, shape, bytes, attributes). Reads every array into `arrays`;
    an array whose Fletcher-32 checksum fails raises _DamagedArray naming it."""
    sums = {}

    def visit(group: h5py.Group) -> None:
        sums[f"{group.name}@"] = _attributes_sum(group.attrs, (CHECKSUMS, DIGEST)
                                                 if group.name == "/" else ())
        for _, member in members(group):
            if isinstance(member, h5py.Group):
                visit(member)
                continue
            try:
                data = member[...]
            except OSError:  # HDF5: "filter returned failure during read"
                raise _DamagedArray(member.name.lstrip("/")) from None
            arrays[member.name] = data
            digest = hashlib.sha256(f"{data.dtype.str}{data.shape}:".encode())
            digest.update(np.ascontiguousarray(data).tobytes())
            digest.update(_attributes_sum(member.attrs).encode())
            sums[member.name] = digest.hexdigest()

    visit(file)
    return sums


def add_content_digest(file: h5py.File) -> None:
    """Write the content digest into the root attributes of a file being saved."""
    record = json.dumps(content_checksums(file, {}), sort_keys=True)
    file.attrs[CHECKSUMS] = record
    file.attrs[DIGEST] = hashlib.sha256(record.encode()).hexdigest()


def _describe_part(key: str, expected: dict, found: dict) -> str:
    if key == "/@":
        what, verb = "the root attributes (format, step, config, RNG state)", ("are", "do")
    elif key.endswith("@"):
        what, verb = f"the attributes of {key[:-1].lstrip('/')}/", ("are", "do")
    else:
        what, verb = f"the array {key.lstrip('/')}", ("is", "does")
    if key not in found:
        return f"{what} {verb[0]} missing"
    if key not in expected:
        return f"{what} {verb[0]} not in its checksum record"
    return f"{what} {verb[1]} not match the SHA-256 in the content digest"


def verify_content_digest(file: h5py.File) -> dict:
    """Every array of the file by HDF5 path, once each has passed its Fletcher-32 checksum and
    every part of the content its SHA-256; Refused names the first part that does not."""
    record, digest = file.attrs.get(CHECKSUMS), file.attrs.get(DIGEST)
    try:
        intact = (isinstance(record, str) and isinstance(digest, str)
                  and hashlib.sha256(record.encode("utf-8", "surrogatepass")).hexdigest() == digest)
        expected = json.loads(record) if intact else None
    except ValueError:
        intact = False
    if not intact or not isinstance(expected, dict):
        raise Refused(f"is damaged: its checksum record (the root attributes {CHECKSUMS!r} and "
                      f"{DIGEST!r}) is missing or does not match; use an earlier checkpoint")
    arrays = {}
    try:
        found = content_checksums(file, arrays)
    except _DamagedArray as damaged:
        raise Refused(f"is damaged: the array {damaged.name} fails its Fletcher-32 checksum; "
                      "use an earlier checkpoint") from None
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            raise Refused(f"is damaged: {_describe_part(key, expected, found)}; use an earlier "
                          "checkpoint")
    return arrays
