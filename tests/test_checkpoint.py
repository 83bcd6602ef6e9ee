"""Checkpoints: exact round trips, clear one-line errors for every bad input, atomic saving
(a saving process killed at random moments never damages the previous file), and portability
between GPU and CPU. Small fake models and optimizers stand in for minigen.nn and minigen.optim,
which the checkpoint only sees through state_dict() and load_state_dict()."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict

import h5py
import numpy as np
import pytest

from minigen import backend
from minigen.checkpoint import (FORMAT_NAME, FORMAT_VERSION, CheckpointError, inspect_checkpoint,
                                load_checkpoint, save_checkpoint)


class FakeTensor:
    """What the checkpoint sees of a minigen Tensor: the array behind it in .data."""

    def __init__(self, data):
        self.data = data


class FakeModel:
    """Parameters come out as Tensors and buffers as raw arrays, as Module.state_dict() gives."""

    def __init__(self, parameters: dict, buffers: dict | None = None, device: str = "cpu"):
        self.parameters = {name: backend.to_device(value, device) for name, value in parameters.items()}
        self.buffers = {name: backend.to_device(value, device) for name, value in (buffers or {}).items()}
        self.device = device

    def state_dict(self) -> OrderedDict:
        state = OrderedDict((name, FakeTensor(value)) for name, value in self.parameters.items())
        state.update(self.buffers)
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        for store in (self.parameters, self.buffers):
            for name in store:
                if name in state:
                    store[name] = backend.to_device(np.array(state[name]), self.device)
                elif strict:
                    raise KeyError(f"missing key {name!r}")


class FakeOptimizer:
    """Holds any nested state dict and gives back exactly what it was given."""

    def __init__(self, state: dict | None = None):
        self.state = state or {}

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        if "param_groups" not in state:
            raise ValueError("optimizer state has no 'param_groups'")
        self.state = state


def make_model(seed: int = 0, hidden: int = 4) -> FakeModel:
    rng = np.random.default_rng(seed)
    return FakeModel(
        {"fc1.weight": rng.standard_normal((hidden, 3)).astype(np.float32),
         "fc1.bias": rng.standard_normal(hidden).astype(np.float32),
         "fc2.weight": rng.standard_normal((2, hidden))},  # float64
        {"bn.running_mean": rng.standard_normal(hidden).astype(np.float32),
         "bn.num_batches_tracked": np.array(7, dtype=np.int64)})


def adam_like_state() -> dict:
    """The shapes of things optimizers, EMA and schedules put in their state dicts."""
    return {
        "state": {0: {"step": 3, "exp_avg": np.arange(6, dtype=np.float32).reshape(2, 3),
                      "exp_avg_sq": np.full(4, 0.5)},
                  1: {"step": 3, "exp_avg": np.zeros(0, dtype=np.float32)}},
        "param_groups": [{"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                          "amsgrad": False, "maximize": None, "params": [0, 1]}],
        "name": "adam",
        "flags": [True, False, None, 1, 2.5, "x", [1, [2, 3]]],
        "mask": np.array([True, False, True]),
        "counts": np.array([1, 2, 3], dtype=np.int64),
        "limits": [float("inf"), -0.0],
        "empty_dict": {},
        "empty_list": [],
        "history": [np.ones(2, dtype=np.float32), {"nested": {5: "five"}}],
    }


def assert_same_tree(actual, expected, where: str = "") -> None:
    """Equal structure, equal values, and equal types (int stays int, bool stays bool)."""
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        np.testing.assert_array_equal(actual, expected, err_msg=where)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), (where, actual, expected)
        for key in expected:
            assert_same_tree(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, list) and len(actual) == len(expected), (where, actual)
        for index, (item, expected_item) in enumerate(zip(actual, expected)):
            assert_same_tree(item, expected_item, f"{where}/{index}")
    else:
        assert type(actual) is type(expected) and actual == expected, (where, actual, expected)


@pytest.fixture
def checkpoint_path(tmp_path):
    path = tmp_path / "run" / "checkpoint.h5"
    save_checkpoint(path, models={"G": make_model(0), "D": make_model(1)},
                    optimizers={"G": FakeOptimizer(adam_like_state())},
                    step=120, config={"lr": 2e-4, "dataset": "digits"})
    return str(path)


# --- round trips -----------------------------------------------------------------------
def test_round_trip_restores_parameters_and_buffers_with_their_dtypes(tmp_path):
    path = tmp_path / "checkpoint.h5"
    saved = make_model(seed=0)
    save_checkpoint(path, models={"G": saved})
    loaded = make_model(seed=99)
    load_checkpoint(path, models={"G": loaded})
    for store in ("parameters", "buffers"):
        assert_same_tree(getattr(loaded, store), getattr(saved, store), store)


def test_round_trip_keeps_nested_optimizer_state_exactly(tmp_path):
    path = tmp_path / "checkpoint.h5"
    state = adam_like_state()
    save_checkpoint(path, optimizers={"adam": FakeOptimizer(state)},
                    ema={"G": FakeOptimizer({"decay": 0.999, "param_groups": [],
                                             "shadow": {"w": np.ones(3)}})})
    optimizer, ema = FakeOptimizer(), FakeOptimizer()
    load_checkpoint(path, optimizers={"adam": optimizer}, ema={"G": ema})
    expected = dict(state, history=[state["history"][0], {"nested": {5: "five"}}])
    assert_same_tree(optimizer.state, expected)
    assert_same_tree(ema.state, {"decay": 0.999, "param_groups": [], "shadow": {"w": np.ones(3)}})


def test_load_returns_step_config_extra_and_versions(tmp_path):
    path = tmp_path / "checkpoint.h5"
    config = {"lr": 2e-4, "channels": [32, 64], "dataset": "digits", "ema": None}
    extra = {"data_position": {"epoch": 3, "index": 17}, "order": np.arange(5)}
    save_checkpoint(path, step=1234, config=config, extra=extra)
    state = load_checkpoint(path)
    assert state["step"] == 1234 and state["config"] == config
    assert_same_tree(state["extra"], extra)
    assert state["format_version"] == FORMAT_VERSION and state["minigen_version"]


def test_root_attributes_name_the_format_and_versions(checkpoint_path):
    with h5py.File(checkpoint_path, "r") as file:
        assert file.attrs["format"] == FORMAT_NAME
        assert file.attrs["format_version"] == FORMAT_VERSION
        assert isinstance(file.attrs["minigen_version"], str)
        assert json.loads(file.attrs["config"]) == {"lr": 2e-4, "dataset": "digits"}
        # One dataset per tensor, named by its state-dict path.
        assert file["models/G/fc1.weight"].shape == (4, 3)
        assert file["models/G/bn.num_batches_tracked"].dtype == np.int64


def test_restoring_rng_state_gives_the_same_next_random_numbers(tmp_path):
    path = tmp_path / "checkpoint.h5"
    generator = backend.generator("cpu")
    backend.manual_seed(5)
    generator.normal((3,), np.float32)
    save_checkpoint(path)
    expected = generator.normal((4,), np.float32)
    generator.normal((10,), np.float32)  # move on, as more training would
    load_checkpoint(path)
    np.testing.assert_array_equal(generator.normal((4,), np.float32), expected)


def test_restore_rng_false_leaves_the_generators_alone(tmp_path):
    path = tmp_path / "checkpoint.h5"
    backend.manual_seed(5)
    save_checkpoint(path)
    backend.manual_seed(6)
    expected_state = backend.get_rng_state()
    load_checkpoint(path, restore_rng=False)
    assert backend.get_rng_state() == expected_state


def test_checkpoint_with_gpu_rng_state_loads_on_this_machine(checkpoint_path):
    with h5py.File(checkpoint_path, "r+") as file:
        rng_state = json.loads(file.attrs["rng_state"])
        rng_state["cuda"] = {"seed": 1, "offset": 12}
        file.attrs["rng_state"] = json.dumps(rng_state)
    state = load_checkpoint(checkpoint_path, models={"G": make_model(3)})
    assert state["rng_state"]["cuda"] == {"seed": 1, "offset": 12}


@pytest.mark.cuda
def test_checkpoint_saved_from_gpu_arrays_loads_into_a_cpu_model(tmp_path, cuda_backend):
    path = tmp_path / "checkpoint.h5"
    cpu_model = make_model(seed=0)
    gpu_model = FakeModel(cpu_model.parameters, cpu_model.buffers, device="cuda")
    save_checkpoint(path, models={"G": gpu_model},
                    optimizers={"G": FakeOptimizer({"param_groups": [],
                                                    "exp_avg": backend.to_device(np.ones(3), "cuda")})})
    loaded = make_model(seed=99)
    optimizer = FakeOptimizer()
    load_checkpoint(path, models={"G": loaded}, optimizers={"G": optimizer})
    assert_same_tree(loaded.parameters, cpu_model.parameters)
    assert_same_tree(optimizer.state["exp_avg"], np.ones(3))
    back_on_gpu = FakeModel(make_model(seed=99).parameters, make_model(seed=99).buffers, "cuda")
    load_checkpoint(path, models={"G": back_on_gpu})
    assert backend.device_of(back_on_gpu.parameters["fc1.weight"]) == "cuda"


# --- bad input: one clear line naming the file -----------------------------------------
def corrupt(kind: str, good_path: str, tmp_path) -> str:
    """Make a bad file of the given kind next to a good checkpoint; return its path."""
    path = str(tmp_path / f"bad_{kind}.h5")
    if kind == "missing":
        return path
    if kind == "directory":
        os.makedirs(path)
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "text":
        with open(path, "w") as handle:
            handle.write("step,loss\n1,0.5\n")
    elif kind == "random_bytes":
        with open(path, "wb") as handle:
            handle.write(np.random.default_rng(0).bytes(4096))
    elif kind.startswith("truncated"):
        fraction = float(kind.split("_")[1])
        data = open(good_path, "rb").read()
        with open(path, "wb") as handle:
            handle.write(data[: int(len(data) * fraction)])
    elif kind == "scrambled":  # same length, garbage after the superblock
        data = bytearray(open(good_path, "rb").read())
        data[512:] = np.random.default_rng(0).bytes(len(data) - 512)
        with open(path, "wb") as handle:
            handle.write(data)
    elif kind == "foreign_hdf5":
        with h5py.File(path, "w") as file:
            file["weights"] = np.ones(3)
    elif kind == "newer_version":
        data = open(good_path, "rb").read()
        with open(path, "wb") as handle:
            handle.write(data)
        with h5py.File(path, "r+") as file:
            file.attrs["format_version"] = FORMAT_VERSION + 1
    return path


@pytest.mark.parametrize("kind, phrase", [
    ("missing", "does not exist"),
    ("directory", "is a directory"),
    ("empty", "is empty"),
    ("text", "is not an HDF5 file (it looks like a text file)"),
    ("random_bytes", "is not an HDF5 file (it does not start with the HDF5 signature)"),
    ("truncated_0.1", "is truncated or damaged"),
    ("truncated_0.5", "is truncated or damaged"),
    ("truncated_0.9", "is truncated or damaged"),
    ("scrambled", "damaged"),
    ("foreign_hdf5", "is not a minigen checkpoint (no 'format' attribute)"),
    ("newer_version", f"has checkpoint format version {FORMAT_VERSION + 1}"),
])
def test_bad_file_gives_one_line_naming_the_file_and_the_problem(kind, phrase, checkpoint_path,
                                                                 tmp_path):
    path = corrupt(kind, checkpoint_path, tmp_path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, models={"G": make_model()})
    message = str(caught.value)
    assert message.startswith(path) and phrase in message and "\n" not in message


def test_damage_anywhere_in_the_file_gives_a_checkpoint_error_or_loads(checkpoint_path,
                                                                      tmp_path):
    """Without checksums on raw data some damage goes unseen, but none may surface as a raw
    h5py KeyError, OSError or TypeError that names no file."""
    good = open(checkpoint_path, "rb").read()
    path, noise = str(tmp_path / "damaged.h5"), np.random.default_rng(1)
    outcomes = set()
    for start in range(0, len(good), 173):
        damaged = bytearray(good)
        damaged[start:start + 256] = noise.bytes(len(damaged[start:start + 256]))
        with open(path, "wb") as handle:
            handle.write(damaged)
        for read in (lambda: load_checkpoint(path, models={"G": make_model()},
                                             optimizers={"G": FakeOptimizer()}),
                     lambda: inspect_checkpoint(path)):
            try:
                read()
                outcomes.add("loaded")
            except CheckpointError as error:
                assert str(error).startswith(path) and "\n" not in str(error)
                outcomes.add("error")
    assert outcomes == {"loaded", "error"}


def test_missing_model_name_lists_what_the_file_holds(checkpoint_path):
    with pytest.raises(CheckpointError, match=r"has no model 'ema' \(it holds: G, D\)"):
        load_checkpoint(checkpoint_path, models={"ema": make_model()})


@pytest.mark.parametrize("model, phrase", [
    (FakeModel({"fc1.weight": np.zeros((4, 3), np.float32), "extra.weight": np.zeros(2)}),
     "model 'G' needs 'extra.weight' but the checkpoint lacks it"),
    (FakeModel({"fc1.weight": np.zeros((4, 3), np.float32)}),
     "model 'G' has no parameter 'fc1.bias' that the checkpoint holds"),
    (make_model(hidden=5),
     "model 'G' key 'fc1.weight' has shape (4, 3) in the checkpoint but (5, 3) in the model"),
])
def test_key_and_shape_mismatches_name_the_key_and_leave_the_model_untouched(model, phrase,
                                                                            checkpoint_path):
    before = {name: value.copy() for name, value in model.parameters.items()}
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(checkpoint_path, models={"G": model})
    message = str(caught.value)
    assert message.startswith(checkpoint_path) and phrase in message and "\n" not in message
    assert_same_tree(model.parameters, before)


def test_non_strict_load_skips_missing_and_unexpected_keys(checkpoint_path):
    model = FakeModel({"fc1.weight": np.zeros((4, 3), np.float32), "new.weight": np.zeros(2)})
    load_checkpoint(checkpoint_path, models={"G": model}, strict=False)
    assert_same_tree(model.parameters["fc1.weight"], make_model(0).parameters["fc1.weight"])
    assert_same_tree(model.parameters["new.weight"], np.zeros(2))


def test_an_objects_own_load_error_is_reraised_naming_the_file(tmp_path):
    path = str(tmp_path / "checkpoint.h5")
    save_checkpoint(path, optimizers={"adam": FakeOptimizer({"state": {}})})
    with pytest.raises(CheckpointError, match=r"cannot load optimizers/adam: ValueError: "
                                              r"optimizer state has no 'param_groups'") as caught:
        load_checkpoint(path, optimizers={"adam": FakeOptimizer()})
    assert str(caught.value).startswith(path)


# --- saving -----------------------------------------------------------------------------
def temp_files(directory) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_save_leaves_no_temp_file_and_gives_the_usual_permissions(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.h5", models={"G": make_model()})
    assert temp_files(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "checkpoint.h5").st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("bad_state, phrase", [
    ({"param_groups": [], "seen": {1, 2}}, "optimizers/adam/seen is a set"),
    ({"param_groups": [], "a/b": 1}, "optimizers/adam has the key 'a/b'"),
    ({"param_groups": [], 1: "x", "1": "y"}, "keys that collide"),
])
def test_failed_save_names_the_value_and_keeps_the_previous_checkpoint(bad_state, phrase,
                                                                       checkpoint_path):
    directory = os.path.dirname(checkpoint_path)
    before = open(checkpoint_path, "rb").read()
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(checkpoint_path, optimizers={"adam": FakeOptimizer(bad_state)})
    assert str(caught.value).startswith(f"cannot save {checkpoint_path}") and phrase in str(caught.value)
    assert open(checkpoint_path, "rb").read() == before
    assert temp_files(directory) == []


SAVE_FOREVER = textwrap.dedent("""
    import sys
    import numpy as np
    from minigen.checkpoint import save_checkpoint
    path, first_step = sys.argv[1], int(sys.argv[2])

    class Holder:
        def __init__(self, state): self.state = state
        def state_dict(self): return self.state

    print("saving", flush=True)
    for step in range(first_step, first_step + 100_000):
        # Every array holds the step, so a loaded file shows whether it is one whole version.
        model = {f"layer{i}.weight": np.full((512, 1024), step, np.float32) for i in range(4)}
        model["counter"] = np.array(step, np.int64)
        optimizer = {"state": {0: {"step": step, "exp_avg": np.full(1000, step, np.float64)}}}
        save_checkpoint(path, models={"G": Holder(model)}, optimizers={"opt": Holder(optimizer)},
                        step=step, config={"step_again": step})
""")


def assert_whole_version(path: str) -> int:
    """Load the checkpoint and check every part of it comes from one and the same save."""
    model, optimizer = FakeModel({}), FakeOptimizer()
    model.load_state_dict = lambda state, strict=True: model.parameters.update(state)
    optimizer.load_state_dict = lambda state: setattr(optimizer, "state", state)
    state = load_checkpoint(path, models={"G": model}, optimizers={"opt": optimizer}, strict=False)
    step = state["step"]
    assert state["config"] == {"step_again": step}
    assert len(model.parameters) == 5
    for name, array in model.parameters.items():
        assert np.all(array == step), name
    assert optimizer.state["state"][0]["step"] == step
    assert np.all(optimizer.state["state"][0]["exp_avg"] == step)
    return step


def test_process_killed_while_saving_leaves_the_previous_checkpoint_whole(tmp_path):
    path = str(tmp_path / "checkpoint.h5")
    script = tmp_path / "save_forever.py"
    script.write_text(SAVE_FOREVER)
    save_checkpoint(path, models={"G": FakeModel({})}, step=0, config={"step_again": 0},
                    optimizers={"opt": FakeOptimizer({"state": {0: {"step": 0,
                                                                  "exp_avg": np.zeros(3)}}})})
    delays = random.Random(0)
    steps, kills_during_a_save = [], 0
    for round_index in range(5):
        first_step = 1000 * (round_index + 1)
        child = subprocess.Popen([sys.executable, str(script), path, str(first_step)],
                                 stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"saving\n"
        time.sleep(delays.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        kills_during_a_save += bool(temp_files(tmp_path))
        steps.append(assert_whole_version(path))
    assert steps == sorted(steps) and steps[-1] >= 1000
    # Saving is nearly all the child does, so most kills land mid-save: the test bites.
    assert kills_during_a_save >= 1
    save_checkpoint(path, step=1)
    assert temp_files(tmp_path) == []


# --- inspect ----------------------------------------------------------------------------
def test_inspect_lists_groups_shapes_dtypes_sizes_and_config(checkpoint_path):
    listing = inspect_checkpoint(checkpoint_path)
    lines = listing.splitlines()
    assert lines[0].startswith(checkpoint_path)
    assert f"format: {FORMAT_NAME} version {FORMAT_VERSION}" in listing
    assert "step: 120" in listing and '"dataset": "digits"' in listing
    assert "models/" in lines and "  G/" in lines and "optimizers/" in lines
    weight_line = next(line for line in lines if "fc1.weight" in line)
    assert "float32" in weight_line and "(4, 3)" in weight_line and "48 B" in weight_line
    assert any("@lr = 0.001" in line for line in lines)
    assert lines[-1].startswith("total: ")


def test_inspect_of_a_bad_file_raises_the_same_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(str(tmp_path / "nothing.h5"))
