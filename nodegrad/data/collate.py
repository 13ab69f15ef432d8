"""PyTorch's ``default_collate`` and ``default_convert``, giving nodegrad tensors.

They follow ``torch.utils.data``: a batch of samples keeps the samples' structure (dicts by key,
namedtuples by field, tuples become lists, other sequences keep their type, strings stay the
group they came in) with the leaves stacked along a new first axis; dtypes are torch's: Python
floats give float64, Python ints int64, bools bool, NumPy arrays and scalars keep their dtype,
and mixed dtypes promote as ``torch.stack`` does. Tensors land on the host (as
torch's do); the DataLoader moves them to its device.
"""

from __future__ import annotations

import collections.abc
import copy
import re
from typing import Any

from .. import _backend as B
from ..tensor import Tensor
from .dataset import StackError, promote, stack_samples

np = B.np

_STR_OR_OBJECT = re.compile(r"[SaUO]")  # NumPy dtypes that cannot become tensors
_ERROR = ("default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; "
          "found {}")


def _is_numpy(x: Any) -> bool:
    return isinstance(x, np.ndarray | np.generic)


def default_convert(data: Any) -> Any:
    """``data`` with every NumPy array and scalar inside it turned into a Tensor (no batching).

    What a DataLoader with ``batch_size=None`` applies to each sample by default in PyTorch;
    numbers, strings and string/object arrays stay as they are, tuples become lists.
    """
    if isinstance(data, Tensor):
        return data
    if _is_numpy(data) and not isinstance(data, np.str_ | np.bytes_):
        if isinstance(data, np.ndarray) and _STR_OR_OBJECT.search(data.dtype.str):
            return data
        return Tensor._of(np.asarray(data))
    if isinstance(data, collections.abc.Mapping):
        return _same_mapping(data, {k: default_convert(data[k]) for k in data})
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, str | bytes):
        return _same_sequence(data, [default_convert(d) for d in data])
    return data


def default_collate(batch: list) -> Any:
    """Stack a list of samples into a batch, keeping their structure (PyTorch's semantics).

    Tensors and arrays are stacked along a new first axis; Python floats give a float64
    tensor, ints int64, bools bool (as torch, whose default dtype does not apply here);
    strings stay as grouped (the batch itself, or a tuple within a transposed field); dicts
    collate per key, namedtuples per field, tuples give a list. Samples of different shapes
    raise a :class:`~nodegrad.data.dataset.StackError` (a RuntimeError, as in PyTorch).
    A batch of mixed numbers gets the dtype ``torch.tensor`` would give it (``[1, 2.5]``: the
    default float dtype) unless a Python float comes first (float64), as in PyTorch.

    >>> b = default_collate([{"x": 1.0, "y": (1, 2)}, {"x": 2.0, "y": (3, 4)}])
    >>> str(b["x"].dtype), [t.tolist() for t in b["y"]]
    ('float64', [[1, 3], [2, 4]])
    """
    return _collate(batch, "default_collate")


def collate_samples(batch: list) -> Any:
    """:func:`default_collate` as the DataLoader applies it to samples it reads one by one
    (its errors speak of batching samples)."""
    return _collate(batch, "batching samples")


def _collate(batch: list, what: str) -> Any:
    """:func:`default_collate`, naming ``what`` in shape errors."""
    if not isinstance(batch, collections.abc.Sequence) or isinstance(batch, str | bytes):
        raise TypeError(f"default_collate: batch must be a list of samples, got "
                        f"{type(batch).__name__}")
    if not batch:
        raise ValueError("default_collate: the batch is empty, expected at least one sample")
    elem = batch[0]
    if isinstance(elem, Tensor):
        from ..ops import stack
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else None for t in batch]
        k = next((i for i, sh in enumerate(shapes) if sh != shapes[0]), None)
        if k is not None and shapes[k] is not None:
            raise StackError(f"{what}: stack expects each tensor to be equal size, but got "
                             f"{shapes[0]} at entry 0 and {shapes[k]} at entry {k}")
        return stack(list(batch))
    if isinstance(elem, np.ndarray):
        if _STR_OR_OBJECT.search(elem.dtype.str):
            raise TypeError(_ERROR.format(elem.dtype))
        return Tensor._of(stack_samples(batch, what))
    if isinstance(elem, float):
        return Tensor._of(_numbers(batch, B.float64))
    if isinstance(elem, int | np.bool_ | np.number):
        return Tensor._of(_numbers(batch))
    if isinstance(elem, str | bytes):
        return batch  # as PyTorch: the group as it is
    if isinstance(elem, collections.abc.Mapping):
        return _same_mapping(elem, {k: _collate([d[k] for d in batch], what) for k in elem})
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return type(elem)(*(_collate(s, what) for s in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        size = len(elem)
        if any(len(s) != size for s in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        fields = [_collate(s, what) for s in zip(*batch)]
        return fields if isinstance(elem, tuple) else _same_sequence(elem, fields)
    raise TypeError(_ERROR.format(type(elem)))


def _scalar_dtype(x: Any):
    """The dtype ``torch.tensor`` gives the number ``x``: a NumPy scalar's own, bool, int64,
    or the default float dtype for a Python float."""
    from ..dtypes import get_default_dtype

    if isinstance(x, np.bool_ | np.number):
        return x.dtype
    if isinstance(x, bool):
        return np.dtype(bool)
    if isinstance(x, int):
        return np.dtype(B.int64)
    if isinstance(x, float):
        return np.dtype(get_default_dtype())
    raise TypeError(f"default_collate: a batch of numbers holds {type(x).__name__} "
                    f"{x!r}; expected bools, ints and floats (Python or NumPy)")


def _numbers(batch: list, dtype=None) -> np.ndarray:
    """A batch of numbers as ``torch.tensor(batch)`` builds it: the dtypes of the elements
    promoted as torch promotes (a float among ints gives the default float dtype, a bool among
    ints int64), unless ``dtype`` is given (a Python float first: float64, as torch's
    ``default_collate``)."""
    if dtype is None:
        dtype = _scalar_dtype(batch[0])
        for x in batch[1:]:
            dtype = promote(dtype, _scalar_dtype(x))
    else:
        for x in batch:
            _scalar_dtype(x)  # a number of another kind is refused, as torch does
    return np.asarray(batch, dtype=dtype)


def _same_mapping(like: collections.abc.Mapping, values: dict) -> Any:
    """``values`` as a mapping of ``like``'s type where it can be built (else a dict)."""
    try:
        if isinstance(like, collections.abc.MutableMapping):
            clone = copy.copy(like)
            clone.update(values)
            return clone
        return type(like)(values)
    except TypeError:
        return values


def _same_sequence(like: collections.abc.Sequence, values: list) -> Any:
    """``values`` as a sequence of ``like``'s type where it can be built (else a list)."""
    try:
        if isinstance(like, collections.abc.MutableSequence):
            clone = copy.copy(like)
            for i, v in enumerate(values):
                clone[i] = v
            return clone
        return type(like)(values)
    except TypeError:
        return values
