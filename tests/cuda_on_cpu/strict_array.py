"""A strict stand-in for CuPy's array and module, on NumPy memory, for tests on machines
without a GPU.

Like cupy.ndarray, `ndarray` refuses implicit conversion to NumPy: `np.asarray(x)`, NumPy's
ufuncs and functions applied to it, mixing it with NumPy arrays in arithmetic, and `float()` /
`int()` of anything but a 0-d array all raise TypeError, so a stray `np.` call on device data
fails here as it would on a GPU. `.get()`, `asnumpy()` and `.item()` are the explicit ways out.
`module` stands in for `cupy` (every NumPy function, taking and returning device arrays, plus
asnumpy, RawModule from runner.py, cuda.runtime, random), and `cupyx` for `cupyx`.
"""
from __future__ import annotations

import types

import numpy as np

from . import runner

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
             "construct a NumPy array explicitly.")


def _unwrap(value, allow_numpy: bool = False):
    """The NumPy array behind device arrays, inside tuples, lists and dicts too."""
    if isinstance(value, ndarray):
        return value._host
    if isinstance(value, np.ndarray) and not allow_numpy:
        raise TypeError(f"Unsupported type {type(value)}: a NumPy array (shape {value.shape}) was "
                        f"mixed with device arrays; move it with xp.asarray first")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(item, allow_numpy) for item in value)
    if isinstance(value, dict):
        return {key: _unwrap(item, allow_numpy) for key, item in value.items()}
    return value


def _wrap(value, out=None):
    """Device arrays for what NumPy returned (0-d ones for its scalars, as CuPy does)."""
    if out is not None and isinstance(value, np.ndarray) and value is out._host:
        return out
    if isinstance(value, np.ndarray):
        return ndarray(value)
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        return ndarray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(item) for item in value)
    if isinstance(value, list):
        return [_wrap(item) for item in value]
    return value


def _device_function(function, name: str, allow_numpy: bool = False):
    def device_function(*args, **kwargs):
        out = kwargs.get("out")
        result = function(*_unwrap(args, allow_numpy), **_unwrap(kwargs, allow_numpy))
        return _wrap(result, out if isinstance(out, ndarray) else None)
    device_function.__name__ = name
    return device_function


class ndarray:
    """A device array: NumPy memory that refuses to be taken for a NumPy array."""

    __array_priority__ = 1000
    __hash__ = None

    def __init__(self, host: np.ndarray):
        if not isinstance(host, np.ndarray):
            raise TypeError(f"ndarray wraps a NumPy array, not {type(host).__name__}")
        self._host = host

    # --- what CuPy refuses ----------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise TypeError(f"numpy.{ufunc.__name__} was applied to a device array; use xp = "
                        f"array_module(x) and xp.{ufunc.__name__}")

    def __array_function__(self, function, types_, args, kwargs):
        raise TypeError(f"numpy.{function.__name__} was called on a device array; use xp = "
                        f"array_module(x) and xp.{function.__name__}")

    def _scalar(self, convert):
        if self._host.ndim != 0:
            raise TypeError(f"only 0-d device arrays convert to Python scalars (shape "
                            f"{self._host.shape}); use .item() or reduce first")
        return convert(self._host[()])

    def __float__(self):
        return self._scalar(float)

    def __int__(self):
        return self._scalar(int)

    def __complex__(self):
        return self._scalar(complex)

    def __bool__(self):
        if self._host.size != 1:
            raise ValueError("The truth value of an array with more than one element is "
                             "ambiguous. Use a.any() or a.all()")
        return bool(self._host.reshape(())[()])

    # --- explicit ways out ------------------------------------------------------------------
    def get(self, stream=None, order="C", out=None) -> np.ndarray:
        return np.array(self._host, order=order)

    def item(self, *args):
        return self._host.item(*args)

    def tolist(self):
        return self._host.tolist()

    # --- array attributes -----------------------------------------------------------------
    shape = property(lambda self: self._host.shape)
    dtype = property(lambda self: self._host.dtype)
    ndim = property(lambda self: self._host.ndim)
    size = property(lambda self: self._host.size)
    itemsize = property(lambda self: self._host.itemsize)
    nbytes = property(lambda self: self._host.nbytes)
    strides = property(lambda self: self._host.strides)
    flags = property(lambda self: self._host.flags)
    T = property(lambda self: ndarray(self._host.T))

    def __len__(self):
        return len(self._host)

    def __iter__(self):
        return (_wrap(item) for item in self._host)

    def __repr__(self):
        return repr(self._host).replace("array(", "device_array(", 1)

    def __str__(self):
        return str(self._host)

    def __getattr__(self, name):
        # Methods (reshape, sum, astype, ...) run on the NumPy array and return device arrays;
        # the host's protocols (__array_interface__, ...) stay hidden, as NumPy would use them.
        if name.startswith("__") or name == "ctypes":
            raise AttributeError(f"device arrays have no {name}")
        attribute = getattr(self._host, name)
        return _device_function(attribute, name) if callable(attribute) else _wrap(attribute)

    def __getitem__(self, key):
        return _wrap(self._host[_unwrap(key)])

    def __setitem__(self, key, value):
        self._host[_unwrap(key)] = _unwrap(value)

    def __reduce__(self):
        raise TypeError("a device array cannot be pickled here; move it with .get() first")


def _binary(name):
    def operator(self, other):
        if isinstance(other, np.ndarray):
            raise TypeError(f"Unsupported type {type(other)}: a NumPy array was used with a "
                            f"device array in {name}; move it with xp.asarray first")
        return _wrap(getattr(self._host, name)(_unwrap(other)))
    return operator


def _inplace(name):
    def operator(self, other):
        getattr(self._host, name)(_unwrap(other))
        return self
    return operator


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lshift", "rshift"):
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _binary(f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__",
            (lambda name: lambda self: _wrap(getattr(self._host, name)()))(f"__{_name}__"))


def asarray(value, dtype=None, order=None):
    """A device array from anything (NumPy arrays and lists are copied to the device)."""
    if isinstance(value, ndarray):
        return value if dtype is None or value.dtype == dtype else value.astype(dtype)
    return ndarray(np.array(value, dtype=dtype, order=order or "K", copy=True))


def asnumpy(value, stream=None, order="C", out=None) -> np.ndarray:
    if isinstance(value, ndarray):
        return value.get(order=order)
    return np.asarray(value, order=order)


def ascontiguousarray(value, dtype=None):
    if isinstance(value, np.ndarray):
        raise TypeError(f"Unsupported type {type(value)}")
    return _wrap(np.ascontiguousarray(_unwrap(value), dtype=dtype))


def get_array_module(*args):
    return module if any(isinstance(arg, ndarray) for arg in args) else np


class _UfuncLike:
    """A NumPy ufunc on device arrays, with its reduce / accumulate / outer / at."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return _device_function(self._ufunc, self.__name__)(*args, **kwargs)

    def __getattr__(self, name):
        attribute = getattr(self._ufunc, name)
        return _device_function(attribute, name) if callable(attribute) else attribute


class _DeviceNamespace(types.ModuleType):
    """`numpy` (or one of its submodules) with device arrays in and out."""

    def __init__(self, name: str, host_module, overrides: dict):
        super().__init__(name)
        self._host_module = host_module
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        attribute = getattr(self._host_module, name)
        if isinstance(attribute, np.ufunc):
            return _UfuncLike(attribute)
        if isinstance(attribute, types.ModuleType):
            return _DeviceNamespace(f"{self.__name__}.{name}", attribute, {})
        if callable(attribute) and not isinstance(attribute, type):
            return _device_function(attribute, name, allow_numpy=name in _FROM_HOST)
        return attribute


# Functions that, as in CuPy, take host data and put it on the device.
_FROM_HOST = {"array", "asanyarray"}


class _Device:
    def __init__(self, device_id: int = 0):
        self.id = device_id
        self.compute_capability = "90"

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _cuda_namespace() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0),
        nvrtc=types.SimpleNamespace(getVersion=lambda: (13, 0)),
        Device=_Device,
        get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None),
        Stream=types.SimpleNamespace(null=types.SimpleNamespace(synchronize=lambda: None)))


module = _DeviceNamespace("cupy", np, dict(
    ndarray=ndarray, asarray=asarray, asnumpy=asnumpy, ascontiguousarray=ascontiguousarray,
    get_array_module=get_array_module, RawModule=runner.RawModule, RawKernel=None,
    cuda=_cuda_namespace()))


def _scatter_add(target, indices, values) -> None:
    np.add.at(_unwrap(target), _unwrap(indices), _unwrap(values))


def _erf(value):
    from scipy.special import erf
    return _wrap(erf(_unwrap(value)))


cupyx = types.SimpleNamespace(
    scatter_add=_scatter_add,
    scipy=types.SimpleNamespace(special=types.SimpleNamespace(erf=_erf)))
