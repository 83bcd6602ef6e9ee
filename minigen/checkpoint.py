"""HDF5 checkpoints: everything needed to resume a run, in one file, written atomically.

Layout: /models/<name>/<state-dict path> (one dataset per tensor), /optimizers/<name>/...,
/schedulers/<name>/..., /ema/<name>/..., /extra/...; root attributes hold the format, the
versions, the step, the config and the RNG states as JSON. Arrays are stored as host NumPy, so
a checkpoint written on the GPU loads on a CPU-only machine. Every problem a user can meet when
loading is a CheckpointError whose message is one line naming the file and the fix.

Integrity (format version 2, minigen.checksums): every array carries HDF5's Fletcher-32
checksum, the root attributes a SHA-256 of every part of the content, and a header in HDF5's
user block the SHA-256 of the whole file and a CRC-32 of each array's stored bytes, checked
before HDF5 parses anything: a damaged file is refused naming the damaged array.
"""
from __future__ import annotations

import io
import json
import os
import re
import textwrap
from datetime import datetime, timezone
from importlib import metadata

import h5py
import numpy as np

from . import backend, checksums
from .checksums import members as _members
from .files import WriteError, temp_prefix, write_atomically

FORMAT_NAME = "minigen-checkpoint"
# Version 2 added a Fletcher-32 checksum on every array and a digest of the whole content;
# version 1 files still load, with a note that they cannot be verified.
FORMAT_VERSION = 2
FIRST_CHECKSUMMED_VERSION = 2
# The objects a checkpoint restores in place, each by name: anything with state_dict() and
# load_state_dict(). Models are checked key by key and shape by shape before loading.
SECTIONS = ("models", "optimizers", "schedulers", "ema")

# Group attributes that record what an HDF5 group cannot say by itself.
LIST_MARKER = "__list__"  # the group was a Python list; members are named 0, 1, ...
INT_KEYS = "__int_keys__"  # JSON list of member names that were int keys in the dict
RESERVED_NAMES = (LIST_MARKER, INT_KEYS)
CHECKSUMS, DIGEST = checksums.CHECKSUMS, checksums.DIGEST  # the content digest's root attributes


class CheckpointError(Exception):
    """A checkpoint cannot be read, written or applied; the message names the file and the fix."""


def minigen_version() -> str:
    try:
        return metadata.version("minigen")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


# ---------------------------------------------------------------------------------------
# Nested structure <-> HDF5. Arrays (and Tensors, through .data) become datasets; dicts become
# groups; lists holding arrays or dicts become groups marked as lists; numbers, strings, bools,
# None and lists of those become JSON attributes, so int/float/bool/None come back exactly.
# ---------------------------------------------------------------------------------------
def _as_array(value):
    """The host NumPy array behind an array or a Tensor-like object, or None for other values."""
    if isinstance(value, np.ndarray):
        return value
    if backend.array_module(value) is not np:  # a CuPy array
        return backend.to_numpy(value)
    data = getattr(value, "data", None)  # a Tensor: its .data is the array
    if data is not None and (isinstance(data, np.ndarray) or backend.array_module(data) is not np):
        return backend.to_numpy(data)
    return None


def _is_json_leaf(value) -> bool:
    """True for values stored as one JSON attribute: scalars, strings, None, lists of those."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json_leaf(item) for item in value)
    return False


def _plain(value):
    """NumPy scalars as Python scalars (tuples as lists), so that JSON can hold them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _member_name(key, where: str) -> str:
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
        raise CheckpointError(f"{where} has the key {key!r} of type {type(key).__name__}; "
                              "a checkpoint holds str or int keys only")
    name = str(int(key)) if not isinstance(key, str) else key
    if name in ("", ".") or "/" in name or name in RESERVED_NAMES:
        raise CheckpointError(f"{where} has the key {name!r}, which cannot name an HDF5 member "
                              f"(no '/', not empty or '.', not {' or '.join(RESERVED_NAMES)})")
    return name


def write_tree(group: h5py.Group, tree: dict | list | tuple, where: str) -> None:
    """Write a nested dict (or list) into `group`; `where` names it in error messages."""
    if isinstance(tree, (list, tuple)):
        group.attrs[LIST_MARKER] = True
        items = [(str(index), index, value) for index, value in enumerate(tree)]
    else:
        items = [(_member_name(key, where), key, value) for key, value in tree.items()]
        names = [name for name, _, _ in items]
        if len(set(names)) != len(names):
            raise CheckpointError(f"{where} has keys that collide once written as names "
                                  f"(such as 1 and '1'): {sorted(names)}")
        int_keys = [name for name, key, _ in items if not isinstance(key, str)]
        if int_keys:
            group.attrs[INT_KEYS] = json.dumps(int_keys)
    for name, _, value in items:
        _write_value(group, name, _plain(value), f"{where}/{name}")


def _write_value(group: h5py.Group, name: str, value, where: str) -> None:
    array = _as_array(value)
    if array is not None:
        if array.dtype == object:
            raise CheckpointError(f"{where} is an array of Python objects; a checkpoint holds "
                                  "numeric and bool arrays only")
        # Fletcher-32 needs chunked storage, which HDF5 refuses for 0-d arrays; the content
        # digest covers those.
        checked = array.ndim > 0
        group.create_dataset(name, data=array, chunks=True if checked else None,
                             fletcher32=checked)
    elif _is_json_leaf(value):
        group.attrs[name] = json.dumps(value)
    elif isinstance(value, (dict, list, tuple)):
        write_tree(group.create_group(name, track_order=True), value, where)
    else:
        raise CheckpointError(f"{where} is a {type(value).__name__}, which a checkpoint cannot "
                              "hold (use arrays, numbers, strings, None, lists or dicts)")


def read_tree(group: h5py.Group, arrays: dict | None = None) -> dict | list:
    """The nested structure that write_tree stored in `group`, with NumPy arrays (taken from
    `arrays`, HDF5 path -> array, when the file was verified and read already)."""
    int_keys = set(json.loads(group.attrs.get(INT_KEYS, "[]")))
    values = {}
    for name, member in _members(group):
        if isinstance(member, h5py.Group):
            values[name] = read_tree(member, arrays)
        elif arrays is not None:
            values[name] = arrays[member.name]
        else:
            values[name] = member[...]  # [...] keeps 0-d arrays as arrays, not scalars
    for name, text in group.attrs.items():
        if name not in RESERVED_NAMES:
            values[name] = json.loads(text)
    if group.attrs.get(LIST_MARKER, False):
        return [values[str(index)] for index in range(len(values))]
    return {(int(name) if name in int_keys else name): value for name, value in values.items()}


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------
def _state_dict_of(owner, section: str, name: str):
    if not hasattr(owner, "state_dict"):
        raise CheckpointError(f"{section}[{name!r}] is a {type(owner).__name__} with no "
                              "state_dict(); pass the object itself (a Module, optimizer, EMA)")
    return owner.state_dict()


def _temp_pattern(path: str) -> re.Pattern:
    return re.compile(re.escape(temp_prefix(path)) + r".*\.tmp")


def save_checkpoint(path: str | os.PathLike, models: dict | None = None,
                    optimizers: dict | None = None, ema: dict | None = None,
                    step: int = 0, config: dict | None = None,
                    schedulers: dict | None = None, extra: dict | None = None) -> None:
    """Save objects (name -> object with state_dict()) and the run's state to one HDF5 file.

    The file is built in memory (HDF5's core driver, so HDF5 never meets a failing disk), every
    array with a Fletcher-32 checksum and the root with a digest of the whole content; its bytes
    are then written under a temporary name in the same folder with plain file I/O, synced, and
    renamed over `path`, so a process killed at any moment leaves either the old or the new
    checkpoint whole. A full disk or another write error is one CheckpointError line naming the
    bytes needed and free; the temporary file is removed and the previous checkpoint untouched.
    Temporary files left by an earlier killed save of the same path are removed after a
    successful save (one process saves a given path at a time). `config` must be
    JSON-serialisable; `extra` is any nested structure of arrays, numbers, strings, lists, dicts.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    owners = {"models": models, "optimizers": optimizers, "schedulers": schedulers, "ema": ema}
    try:
        config_json = json.dumps(config or {}, default=_plain_or_path)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"cannot save {path}: the config is not JSON-serialisable "
                              f"({error}); pass numbers, strings, lists and dicts") from None
    try:
        image = _file_image(owners, step, config_json, extra)
    except CheckpointError as error:
        raise CheckpointError(f"cannot save {path}: {error}") from None
    try:
        kept = ("; the previous checkpoint is untouched" if os.path.exists(path)
                else "; no checkpoint was written")
        write_atomically(path, image, kept=kept)
    except WriteError as error:
        raise CheckpointError(str(error).replace("cannot write", "cannot save", 1)) from None
    pattern = _temp_pattern(path)
    for leftover in os.listdir(directory):
        if pattern.fullmatch(leftover):
            try:
                os.remove(os.path.join(directory, leftover))
            except FileNotFoundError:
                pass


def _file_image(owners: dict, step: int, config_json: str, extra: dict | None) -> bytes:
    """The bytes of a checkpoint file, built in memory: HDF5's core driver with no backing
    store never touches the disk. libver v110 gives checksummed object headers and B-trees, so
    damaged metadata is refused as well as damaged arrays."""
    with h5py.File(f"checkpoint-in-memory-{id(owners)}.h5", "w", driver="core",
                   backing_store=False, track_order=True, libver=("v110", "latest")) as file:
        file.attrs["format"] = FORMAT_NAME
        file.attrs["format_version"] = FORMAT_VERSION
        file.attrs["minigen_version"] = minigen_version()
        file.attrs["saved_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        file.attrs["step"] = int(step)
        file.attrs["config"] = config_json
        file.attrs["rng_state"] = json.dumps(backend.get_rng_state(), default=_plain_or_path)
        for section in SECTIONS:
            section_group = file.create_group(section, track_order=True)
            for name, owner in (owners[section] or {}).items():
                member = _member_name(name, section)
                write_tree(section_group.create_group(member, track_order=True),
                           _state_dict_of(owner, section, name), f"{section}/{member}")
        write_tree(file.create_group("extra", track_order=True), extra or {}, "extra")
        checksums.add_content_digest(file)
        file.flush()
        regions = checksums.array_regions(file)
        image = bytes(file.id.get_file_image())
    return checksums.with_header(image, regions, FORMAT_VERSION)


def _plain_or_path(value):
    """JSON fallback: NumPy scalars and arrays as numbers and lists, paths as strings."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


# ---------------------------------------------------------------------------------------
# Opening and checking a file
# ---------------------------------------------------------------------------------------
def _one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


def open_checkpoint_file(path: str, require_format: bool = True) -> h5py.File:
    """Open `path` read-only, failing with one clear line if it is not a readable checkpoint."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist; pass the checkpoint.h5 that "
                              "`minigen train --out DIR` wrote into DIR")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it "
                              f"(for example {os.path.join(path, 'checkpoint.h5')})")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): nothing was ever written to it; "
                              "use an earlier checkpoint")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path} cannot be read (permission denied); check the file's "
                              "owner and permissions")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        checked = checksums.check_header(data, FORMAT_VERSION, minigen_version())
    except checksums.Refused as refused:
        raise CheckpointError(f"{path} {refused}") from None
    if not checked and not data.startswith(checksums.HDF5_SIGNATURE):
        if h5py.is_hdf5(path):  # an HDF5 file after a user block that is not minigen's header
            raise CheckpointError(f"{path} is damaged: its first bytes are not minigen's "
                                  "header but HDF5 data follows them (a damaged header, or "
                                  "another program's file); use an earlier checkpoint")
        try:
            data[:512].decode("utf-8")
            looks_like = "it looks like a text file"
        except UnicodeDecodeError:
            looks_like = "it does not start with the HDF5 signature"
        raise CheckpointError(f"{path} is not an HDF5 file ({looks_like}), so not a minigen "
                              "checkpoint; pass a .h5 file written by `minigen train`")
    try:
        # HDF5 reads the bytes checked above, from memory: never a file changed since.
        file = h5py.File(io.BytesIO(data), "r", locking=False)
    except OSError as error:
        raise CheckpointError(f"{path} is truncated or damaged: HDF5 cannot open it "
                              f"({_one_line(error)}); it was probably cut short by a crash or an "
                              "incomplete copy, use an earlier checkpoint") from None
    if not require_format:
        return file
    try:
        _check_format(file, path)
    # KeyError: a garbled header; RuntimeError: h5py on damaged attribute storage
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
        file.close()
        raise CheckpointError(f"{path} is damaged: {_one_line(error)}; use an earlier "
                              "checkpoint") from None
    except BaseException:
        file.close()
        raise
    return file


def _check_format(file: h5py.File, path: str) -> None:
    if file.attrs.get("format") != FORMAT_NAME:
        found = file.attrs.get("format")
        what = "no 'format' attribute" if found is None else f"format is {found!r}"
        raise CheckpointError(f"{path} is not a minigen checkpoint ({what}); pass a file "
                              "written by `minigen train`")
    version = file.attrs.get("format_version")
    if version is None:
        raise CheckpointError(f"{path} has no 'format_version' attribute; the file is damaged, "
                              "use an earlier checkpoint")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {int(version)}, but minigen "
                              f"{minigen_version()} reads versions up to {FORMAT_VERSION}; "
                              "upgrade minigen to load it")


# ---------------------------------------------------------------------------------------
# Verifying and reading
# ---------------------------------------------------------------------------------------
def verify_checkpoint(file: h5py.File, path: str) -> tuple[dict | None, str | None]:
    """(arrays, note): every array of a checked file, by HDF5 path, and None; or (None, note)
    for a file of a format version before checksums. Raises CheckpointError naming the
    damaged part."""
    if file.attrs.get("format_version") is None:
        raise CheckpointError(f"{path} has no 'format_version' attribute; the file is damaged, "
                              "use an earlier checkpoint")
    version = int(file.attrs["format_version"])
    if version < FIRST_CHECKSUMMED_VERSION:
        return None, (f"note: {path} has checkpoint format version {version}, from before "
                      "checkpoints carried checksums: it loads, but damage to it cannot be "
                      "detected (a run resumed from it saves checksummed checkpoints)")
    try:
        return checksums.verify_content_digest(file), None
    except checksums.Refused as refused:
        raise CheckpointError(f"{path} {refused}") from None


def _read_everything(file: h5py.File, path: str, sections: dict) -> dict:
    """Read the requested sections and the root state into memory (so the file can close)."""
    state = {}
    try:
        arrays, state["note"] = verify_checkpoint(file, path)
        for section, owners in sections.items():
            group = file.get(section)
            held = list(group.keys()) if group is not None else []
            for name in owners:
                if name not in held:
                    singular = {"models": "model", "optimizers": "optimizer",
                                "schedulers": "scheduler", "ema": "EMA"}[section]
                    raise CheckpointError(f"{path} has no {singular} {name!r} (it holds: "
                                          f"{', '.join(held) or 'none'})")
            state[section] = {name: read_tree(group[name], arrays) for name in owners}
        state["extra"] = read_tree(file["extra"], arrays) if "extra" in file else {}
        state["step"] = int(file.attrs.get("step", 0))
        state["config"] = json.loads(file.attrs.get("config", "{}"))
        state["rng_state"] = json.loads(file.attrs.get("rng_state", "{}"))
        state["minigen_version"] = str(file.attrs.get("minigen_version", "unknown"))
        state["format_version"] = int(file.attrs["format_version"])
    except CheckpointError:
        raise
    # unreadable blocks, bad JSON, damaged attribute storage
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path} is damaged: {_one_line(error)}; use an earlier "
                              "checkpoint") from None
    return state


def _shape_of(value) -> tuple:
    array = _as_array(value)
    return tuple(np.shape(array if array is not None else value))


def _check_model_arrays(path: str, name: str, model, arrays: dict, strict: bool) -> None:
    """Compare a model's state dict with the stored one before touching the model."""
    expected = {key: _shape_of(value) for key, value in model.state_dict().items()}
    if strict:
        missing = [key for key in expected if key not in arrays]
        if missing:
            raise CheckpointError(f"{path}: model {name!r} needs {missing[0]!r} but the "
                                  f"checkpoint lacks it ({len(missing)} missing key(s): "
                                  f"{', '.join(missing[:5])}); was it saved from another "
                                  "architecture or config?")
        unexpected = [key for key in arrays if key not in expected]
        if unexpected:
            raise CheckpointError(f"{path}: model {name!r} has no parameter {unexpected[0]!r} "
                                  f"that the checkpoint holds ({len(unexpected)} unexpected "
                                  f"key(s): {', '.join(unexpected[:5])}); was it saved from "
                                  "another architecture or config?")
    for key, shape in expected.items():
        if key in arrays and tuple(np.shape(arrays[key])) != shape:
            raise CheckpointError(f"{path}: model {name!r} key {key!r} has shape "
                                  f"{tuple(np.shape(arrays[key]))} in the checkpoint but {shape} "
                                  "in the model; build the model with the checkpoint's config")


def load_checkpoint(path: str | os.PathLike, models: dict | None = None,
                    optimizers: dict | None = None, ema: dict | None = None,
                    schedulers: dict | None = None, restore_rng: bool = True,
                    strict: bool = True) -> dict:
    """Restore the named objects in place from `path` and return the rest of the run's state.

    Returns {"step", "config", "rng_state", "extra", "minigen_version", "format_version",
    "verified", "note"}. The whole file is verified first (every array's Fletcher-32 checksum
    and the content digest) and a damaged one refused naming the damaged part; a file of a
    format version before checksums loads with verified False and a note saying so. Models are
    checked (keys with `strict`, shapes always) before any object is changed; arrays
    arrive as NumPy and each object's load_state_dict moves them to its own device. With
    `restore_rng` the default generators continue exactly where the saved run left them.
    """
    path = os.fspath(path)
    requested = {"models": models, "optimizers": optimizers, "schedulers": schedulers, "ema": ema}
    requested = {section: dict(owners or {}) for section, owners in requested.items()}
    with open_checkpoint_file(path) as file:
        state = _read_everything(file, path, requested)
    for name, model in requested["models"].items():
        _check_model_arrays(path, name, model, state["models"][name], strict)
    for section, owners in requested.items():
        for name, owner in owners.items():
            try:
                if section == "models":
                    owner.load_state_dict(state[section][name], strict=strict)
                else:
                    owner.load_state_dict(state[section][name])
            except Exception as error:
                raise CheckpointError(f"{path}: cannot load {section}/{name}: "
                                      f"{type(error).__name__}: {_one_line(error)}") from error
    if restore_rng and state["rng_state"]:
        backend.set_rng_state(state["rng_state"])
    result = {key: state[key] for key in ("step", "config", "rng_state", "extra",
                                          "minigen_version", "format_version", "note")}
    result["verified"] = state["note"] is None
    return result


# ---------------------------------------------------------------------------------------
# Inspecting
# ---------------------------------------------------------------------------------------
def _human_bytes(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"


def _describe_group(group: h5py.Group, depth: int, lines: list, totals: dict) -> None:
    """Append the attributes, subgroups and datasets under `group`, indented by depth."""
    indent, name_width = "  " * depth, max(34 - 2 * depth, 8)
    if depth > 0:  # the root's attributes are described above the tree
        lines.extend(f"{indent}@{name} = {text}" for name, text in group.attrs.items()
                     if name not in RESERVED_NAMES)
    for name, member in _members(group):
        if isinstance(member, h5py.Group):
            kind = " (list)" if member.attrs.get(LIST_MARKER, False) else ""
            lines.append(f"{indent}{name}/{kind}")
            _describe_group(member, depth + 1, lines, totals)
        else:
            totals["datasets"] += 1
            totals["bytes"] += member.nbytes
            lines.append(f"{indent}{name:<{name_width}} {str(member.dtype):<8} "
                         f"{str(member.shape):<18} {_human_bytes(member.nbytes)}")


def inspect_checkpoint(path: str | os.PathLike) -> str:
    """A readable listing: root attributes (config pretty-printed), groups, datasets with
    dtype, shape and size, and totals, then "verified: ..." once every array's checksum and
    the content digest match (a damaged file raises CheckpointError naming what is damaged).
    Lists any HDF5 file, saying when it is not minigen's."""
    path = os.fspath(path)
    with open_checkpoint_file(path, require_format=False) as file:
        try:
            return "\n".join(_listing(file, path))
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{path} is damaged: {_one_line(error)}; use an earlier "
                                  "checkpoint") from None


def summarize_checkpoint(path: str | os.PathLike, parameter_counts: dict | None = None) -> str:
    """A short listing: format, step, each object of each section with its size, the config,
    and totals (inspect_checkpoint lists every array). parameter_counts: model name -> number of
    parameters, shown beside the model (the file alone cannot tell parameters from buffers)."""
    path = os.fspath(path)
    parameter_counts = parameter_counts or {}
    with open_checkpoint_file(path, require_format=False) as file:
        try:
            if file.attrs.get("format") != FORMAT_NAME:  # someone else's HDF5: list it all
                return "\n".join(_listing(file, path))
            verdict = _verdict(file, path)  # first: damage named, not met while listing
            header = _header(file, path)
            lines = header[:3]  # the file, its format, the step
            totals = {"datasets": 0, "bytes": 0}
            for section in SECTIONS:
                if section not in file or not len(file[section]):
                    continue
                lines.append(f"{section}:")
                for name, member in _members(file[section]):
                    sizes = {"datasets": 0, "bytes": 0}
                    if isinstance(member, h5py.Group):
                        _describe_group(member, 0, [], sizes)
                    else:
                        sizes.update(datasets=1, bytes=member.nbytes)
                    totals = {key: totals[key] + sizes[key] for key in totals}
                    count = parameter_counts.get(name) if section == "models" else None
                    shown = f"{count:,} parameters, " if count is not None else ""
                    lines.append(f"  {name:<20} {shown}{sizes['datasets']} arrays, "
                                 f"{_human_bytes(sizes['bytes'])}")
            config = json.loads(file.attrs.get("config", "{}"))
            pairs = ", ".join(f"{key}={json.dumps(value)}" for key, value in config.items())
            lines.append("config:")
            lines.extend(textwrap.wrap(pairs, 96, initial_indent="  ", subsequent_indent="  ",
                                       break_on_hyphens=False))
        except (OSError, KeyError, ValueError) as error:
            raise CheckpointError(f"{path} is damaged: {_one_line(error)}; use an earlier "
                                  "checkpoint") from None
    lines.append(f"total: {totals['datasets']} arrays, {_human_bytes(totals['bytes'])} "
                 "(--full lists every array)")
    lines.append(verdict)
    return "\n".join(lines)


def _header(file: h5py.File, path: str) -> list[str]:
    """The file, its format line, step, RNG states and config (minigen checkpoints)."""
    lines = [f"{path}  ({_human_bytes(os.path.getsize(path))} on disk)"]
    if file.attrs.get("format") == FORMAT_NAME:
        lines.append(f"format: {FORMAT_NAME} version {file.attrs.get('format_version')}, "
                     f"written by minigen {file.attrs.get('minigen_version')} at "
                     f"{file.attrs.get('saved_at')}")
        lines.append(f"step: {file.attrs.get('step')}")
        rng = json.loads(file.attrs.get("rng_state", "{}"))
        lines.append(f"rng_state: {', '.join(rng) or 'none'}")
        config = json.loads(file.attrs.get("config", "{}"))
        lines.append("config:" + ("" if config else " {}"))
        if config:
            lines.extend("  " + line for line in json.dumps(config, indent=2).splitlines())
    return lines


def _verdict(file: h5py.File, path: str) -> str:
    """Verifies a minigen checkpoint (CheckpointError naming the damage) and says so in a line."""
    arrays, note = verify_checkpoint(file, path)
    return note or (f"verified: all {len(arrays)} arrays pass their Fletcher-32 checksums and "
                    f"the content matches its SHA-256 digest ({file.attrs[DIGEST][:16]}...)")


def _listing(file: h5py.File, path: str) -> list[str]:
    ours = file.attrs.get("format") == FORMAT_NAME
    verdict = _verdict(file, path) if ours else None  # first: damage named, not met listing
    lines = _header(file, path)
    described = set()
    if ours:
        described = {"format", "format_version", "minigen_version", "saved_at", "step",
                     "config", "rng_state", CHECKSUMS, DIGEST}
    else:
        lines.append("(not a minigen checkpoint: no 'format' attribute; listing it anyway)")
    for name, value in file.attrs.items():
        if name not in described:
            lines.append(f"@{name} = {value}")
    totals = {"datasets": 0, "bytes": 0}
    _describe_group(file, 0, lines, totals)
    lines.append(f"total: {totals['datasets']} arrays, {_human_bytes(totals['bytes'])}")
    if ours:
        lines.append(verdict)
    return lines
