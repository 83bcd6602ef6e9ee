"""Shape ops: reshape, permute/transpose, expand, (un)squeeze, flatten, cat, stack, split,
indexing and pad.

None of these change values, only where they sit, so each backward is the inverse
rearrangement: reshape back, the inverse permutation, a scatter-add for indexing.
"""
from __future__ import annotations

import numpy as np

from minigen import backend
from minigen.ops.elementwise import broadcast_to
from minigen.tensor import Function, Tensor


def _shape_arg(shape) -> tuple:
    """Accept reshape(2, 3) and reshape((2, 3)) alike."""
    return tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else tuple(shape)


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {x.shape} ({x.size} elements) "
                             f"into shape {self.shape}") from None

    def backward(self, grad_output):
        return reshape(grad_output, self.inputs[0].shape)


class Permute(Function):
    def __init__(self, dims):
        self.dims = dims

    def forward(self, x):
        if sorted(d % x.ndim for d in self.dims) != list(range(x.ndim)):
            raise ValueError(f"permute: {self.dims} is not a permutation of the "
                             f"{x.ndim} dims of shape {x.shape}")
        return x.transpose(self.dims)

    def backward(self, grad_output):
        inverse = tuple(np.argsort([d % grad_output.ndim for d in self.dims]))
        return Permute(inverse)(grad_output)


class Cat(Function):
    def __init__(self, dim):
        self.dim = dim

    def forward(self, *arrays):
        return backend.array_module(arrays[0]).concatenate(arrays, axis=self.dim)

    def backward(self, grad_output):
        dim = self.dim % grad_output.ndim
        grads, start = [], 0
        for x in self.inputs:
            index = (slice(None),) * dim + (slice(start, start + x.shape[dim]),)
            grads.append(getitem(grad_output, index))
            start += x.shape[dim]
        return tuple(grads)


class Split(Function):
    """Consecutive pieces of x along `dim` of the given sizes (views), as one op with one
    output per piece, so that the backward is one concatenation of their gradients (a zero
    one for a piece that got none) rather than a zero-filled input per piece, summed:
    attention's q, k, v from one (N, L, 3C) projection."""

    def __init__(self, sizes, dim):
        self.sizes, self.dim = tuple(sizes), dim

    def forward(self, x):
        pieces, start = [], 0
        for size in self.sizes:
            pieces.append(x[(slice(None),) * self.dim + (slice(start, start + size),)])
            start += size
        return tuple(pieces)

    def backward(self, *grad_outputs):
        return cat(grad_outputs, self.dim)


def _normalise_index(index):
    """Tensors become arrays, boolean masks become integer arrays (so scatter-add works)."""
    items = index if isinstance(index, tuple) else (index,)
    normalised = []
    for item in items:
        if isinstance(item, Tensor):
            item = item.data
        elif isinstance(item, list):
            item = np.asarray(item)
        if hasattr(item, "dtype") and item.dtype == bool:
            normalised.extend(item.nonzero())
        else:
            normalised.append(item)
    advanced = any(hasattr(item, "dtype") for item in normalised)
    return tuple(normalised), advanced


class GetItem(Function):
    def __init__(self, index):
        self.index, self.advanced = _normalise_index(index)

    def forward(self, x):
        index = self.index
        if self.advanced and backend.array_module(x) is not np:  # indices follow the data
            index = tuple(backend.to_device(i, "cuda") if hasattr(i, "dtype") else i for i in index)
            self.index = index
        return x[index]

    def backward(self, grad_output):
        return IndexAdd(self.index, self.advanced, self.inputs[0].shape)(grad_output)


class IndexAdd(Function):
    """zeros(shape) with grad_output added at `index` (repeated indices summed)."""

    def __init__(self, index, advanced, shape):
        self.index, self.advanced, self.shape = index, advanced, shape

    def forward(self, grad_output):
        out = backend.array_module(grad_output).zeros(self.shape, dtype=grad_output.dtype)
        if self.advanced:
            backend.scatter_add(out, self.index, grad_output)
        else:
            out[self.index] = grad_output
        return out

    def backward(self, grad_grad):
        getter = GetItem(())
        getter.index, getter.advanced = self.index, self.advanced
        return getter(grad_grad)


class Pad(Function):
    """Constant padding; pad = (left, right, top, bottom, ...) from the last dim backwards."""

    def __init__(self, pad, value):
        if len(pad) % 2:
            raise ValueError(f"pad needs pairs (before, after) per dim, got {pad}")
        self.pad, self.value = tuple(pad), value

    def forward(self, x):
        pairs = [(0, 0)] * x.ndim
        for i in range(len(self.pad) // 2):
            pairs[x.ndim - 1 - i] = (self.pad[2 * i], self.pad[2 * i + 1])
        self.pairs = pairs
        return backend.array_module(x).pad(x, pairs, constant_values=self.value)

    def backward(self, grad_output):
        index = tuple(slice(before, grad_output.shape[d] - after)
                      for d, (before, after) in enumerate(self.pairs))
        return getitem(grad_output, index)


# ---- the functional forms ------------------------------------------------------------------
def reshape(x: Tensor, *shape) -> Tensor:
    shape = _shape_arg(shape)
    return x if shape == x.shape else Reshape(shape)(x)


def permute(x: Tensor, *dims) -> Tensor:
    return Permute(_shape_arg(dims))(x)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    dims = list(range(x.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return Permute(tuple(dims))(x)


def expand(x: Tensor, *shape) -> Tensor:
    """Broadcast to shape; -1 keeps a dim's size, as in PyTorch."""
    shape = _shape_arg(shape)
    lead = len(shape) - x.ndim
    shape = tuple(x.shape[i - lead] if size == -1 else size for i, size in enumerate(shape))
    return broadcast_to(x, shape)


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    dim = dim % (x.ndim + 1)
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


def squeeze(x: Tensor, dim=None) -> Tensor:
    if dim is None:
        return reshape(x, tuple(size for size in x.shape if size != 1))
    if x.ndim == 0:  # as in PyTorch, squeezing a scalar leaves it as it is
        return x
    dim = dim % x.ndim
    if x.shape[dim] != 1:
        return x
    return reshape(x, x.shape[:dim] + x.shape[dim + 1:])


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    if x.ndim == 0:  # as in PyTorch, a scalar flattens to one element
        return reshape(x, (1,))
    start, end = start_dim % x.ndim, end_dim % x.ndim
    merged = 1
    for size in x.shape[start:end + 1]:
        merged *= size
    return reshape(x, x.shape[:start] + (merged,) + x.shape[end + 1:])


def cat(tensors, dim: int = 0) -> Tensor:
    tensors = list(tensors)
    shapes = [t.shape for t in tensors]
    ndim = len(shapes[0])
    dim_ = dim % ndim
    for shape in shapes:
        if len(shape) != ndim or any(a != b for i, (a, b) in enumerate(zip(shape, shapes[0])) if i != dim_):
            raise ValueError(f"cat: shapes {shapes} differ outside dim {dim}")
    return Cat(dim)(*tensors)


def stack(tensors, dim: int = 0) -> Tensor:
    tensors = list(tensors)
    if len({t.shape for t in tensors}) > 1:
        raise ValueError(f"stack: all shapes must be equal, got {[t.shape for t in tensors]}")
    return cat([unsqueeze(t, dim) for t in tensors], dim)


def getitem(x: Tensor, index) -> Tensor:
    return GetItem(index)(x)


def split(x: Tensor, split_size, dim: int = 0) -> tuple:
    """Pieces of split_size along dim (the last may be smaller), or sizes from a list."""
    total = x.shape[dim]
    if isinstance(split_size, int):
        sizes = [min(split_size, total - start) for start in range(0, total, split_size)]
    else:
        sizes = list(split_size)
        if sum(sizes) != total:
            raise ValueError(f"split: sizes {sizes} do not add up to {total} (dim {dim})")
    return Split(sizes, dim % x.ndim)(x)


def chunk(x: Tensor, chunks: int, dim: int = 0) -> tuple:
    size = -(-x.shape[dim] // chunks)
    return split(x, size, dim)


def pad(x: Tensor, pad, mode: str = "constant", value: float = 0.0) -> Tensor:
    if mode != "constant":
        raise ValueError(f"pad: only mode='constant' is supported, not {mode!r}")
    return Pad(pad, value)(x)
