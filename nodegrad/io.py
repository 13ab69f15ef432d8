"""Checkpoints: tensors as safetensors plus JSON metadata, written atomically, never pickle.

``save`` writes to a temporary file in the same folder, flushes it to disk, renames it over
the target and flushes the folder, so a crash leaves either the old file or the new one, never
half of one. The format is the one ``safetensors.torch`` reads and writes: state dicts move
between nodegrad and PyTorch when the names match. Pickles (``torch.save`` files) are refused,
never unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from . import _backend as B
from .tensor import Tensor


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or not a safetensors file."""


_META_KEY = "nodegrad"
_ALIAS_KEY = "nodegrad.aliases"  # {name: name written}: the second names of shared tensors
_TREE_KEY = "nodegrad.tree"  # the nesting of a checkpoint saved as a dict of state dicts
_C128_KEY = "nodegrad.complex128"  # names of complex128 tensors written as float64 (..., 2) pairs
_ORDER_KEY = "nodegrad.order"  # a flat state's names in their given order (safetensors sorts)
# the dtypes a safetensors file can hold that NumPy has (what save writes, load returns)
_SAVABLE = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "float16", "bfloat16", "float32", "float64", "complex64")
# safetensors' names of the dtypes nodegrad has
_READABLE = {"BOOL", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "F16", "F32", "F64",
             "C64", "BF16"}
# atomic_write's temporary files: ".<target name>.<8 random characters>.tmp"
_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    """The process's umask (set and restored; the transient value is the strictest one)."""
    old = os.umask(0o077)
    os.umask(old)
    return old


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a folder
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part.

    The new file gets the mode ``open()`` would give it (0666 less the umask); a symbolic link
    keeps pointing where it did and its target is replaced; the folder is fsynced after the
    rename. An ``OSError`` names ``path`` (not the temporary file).
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:  # name the target, not the temporary file (or no file at all)
        if e.errno is not None and (e.filename is None
                                    or _TEMP.match(Path(str(e.filename)).name)):
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for p in folder.iterdir():
        if _TEMP.match(p.name) and stat.S_ISREG(p.lstat().st_mode):
            p.unlink()
            gone.append(p)
    return gone


def _unencodable(obj, where: str) -> tuple[str, object] | None:
    """The first value inside ``obj`` that JSON cannot encode, with its key path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str | int | float | bool) and k is not None:
                return f"{where} (key {k!r})", k
            if (bad := _unencodable(v, f"{where}[{k!r}]")) is not None:
                return bad
        return None
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            if (bad := _unencodable(v, f"{where}[{i}]")) is not None:
                return bad
        return None
    if obj is None or isinstance(obj, str | int | float | bool):
        return None
    return where, obj


def _metadata_json(metadata) -> str:
    try:
        return json.dumps({} if metadata is None else metadata)
    except (TypeError, ValueError) as e:
        bad = _unencodable(metadata, "metadata")
        if bad is None:  # e.g. a circular reference
            raise TypeError(f"save: metadata cannot be written as JSON: {e}") from None
        where, v = bad
        hint = " (a NumPy/array scalar: pass x.item())" if hasattr(v, "item") else ""
        raise TypeError(f"save: {where} is {type(v).__name__}{hint}, which JSON cannot encode; "
                        "metadata may hold str, int, float, bool, None, lists and dicts with "
                        "string keys") from None


def _is_tensor(v) -> bool:
    return isinstance(v, Tensor) or (B.is_array(v) and not isinstance(v, B.np.generic))


def _encode_tree(obj, tensors: dict, path: str):
    """The JSON form of a nested checkpoint (``torch.save``'s dicts of state dicts); its tensors
    move into ``tensors`` under their slash-joined path."""
    if _is_tensor(obj):
        key = path.lstrip("/")
        while key in tensors:  # a key holding "/" met a nested one: keep both
            key += "#"
        tensors[key] = obj
        return {"t": key}
    if isinstance(obj, B.np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, Mapping):
        if not all(isinstance(k, str | int) and not isinstance(k, bool) for k in obj):
            raise TypeError(f"save: {path or 'the checkpoint'} has keys other than str and "
                            "int, which a safetensors checkpoint cannot hold")
        return {"d": [[k, _encode_tree(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        kind = "l" if isinstance(obj, list) else "u"
        return {kind: [_encode_tree(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    raise TypeError(f"save: {path.lstrip('/')!r} is {type(obj).__qualname__}; a checkpoint "
                    "holds tensors, arrays, numbers, strings, None, and dicts, lists and "
                    "tuples of them (nodegrad never pickles)")


def _decode_tree(obj, tensors: dict):
    """The nested checkpoint :func:`_encode_tree` wrote, its tensors read back."""
    if not isinstance(obj, dict):
        return obj
    (kind, v), = obj.items()
    if kind == "t":
        return tensors[v]
    if kind == "d":
        return {k: _decode_tree(x, tensors) for k, x in v}
    items = [_decode_tree(x, tensors) for x in v]
    return items if kind == "l" else tuple(items)


def save(state: Mapping[str, Tensor], path: str | os.PathLike | BinaryIO,
         metadata: dict | None = None) -> None:
    """Save a flat mapping of tensors (e.g. ``model.state_dict()``) and JSON-able ``metadata``.

    ``path`` is a file name (written atomically) or a binary file object opened for writing
    (``io.BytesIO``, as ``torch.save(sd, buffer)`` takes), which gets the bytes at its position.

    A tensor given under several names (tied weights in a state dict) is written once, under
    its first name; the file records the other names, which :func:`load` gives back as the
    same tensor (as ``safetensors.torch.save_model`` writes shared tensors once).

    A nested checkpoint, as ``torch.save`` takes (``{"model": model.state_dict(),
    "optimizer": opt.state_dict(), "epoch": 3}``), is saved too: its tensors under their
    slash-joined paths (``model/fc.weight``), the rest as JSON, and :func:`load` gives it back
    with the same nesting.

    safetensors has no complex128: such a tensor is written as float64 (real, imaginary) pairs
    in a trailing axis of 2 (PyTorch's ``view_as_real``), which :func:`load` turns back into
    complex128 (another reader sees the float64 pairs)."""
    from safetensors.numpy import save

    if not isinstance(state, Mapping):
        raise TypeError(f"save: expected a mapping of names to tensors (e.g. "
                        f"model.state_dict()), got {type(state).__name__}")
    tree = None
    if not all(isinstance(k, str) and _is_tensor(v) for k, v in state.items()):
        flat: dict = {}
        tree = _encode_tree(state, flat, "")
        state = flat
    arrays = {}
    first: dict = {}  # id of a tensor's array -> (the array, the first name it was given)
    aliases: dict = {}
    pairs: list = []  # complex128 tensors written as float64 pairs
    for k, v in state.items():
        if not isinstance(k, str):
            raise TypeError(f"save: keys must be strings, got {type(k).__name__}")
        if k == "__metadata__":  # safetensors' header keeps this name for the metadata
            raise ValueError("save: '__metadata__' is reserved by the safetensors format for "
                             "the metadata; rename that tensor")
        if isinstance(v, Tensor) and id(v._data) in first:
            aliases[k] = first[id(v._data)][1]
            continue
        a = v.numpy() if isinstance(v, Tensor) else v
        if not B.is_array(a):
            kind = type(v).__qualname__
            if type(v).__module__ not in ("builtins", None):
                kind = f"{type(v).__module__}.{kind}"
            raise TypeError(f"save: {k!r} is {kind}, not a nodegrad tensor or array")
        if a.dtype.name == "complex128":
            a = B.backend_of(a).xp.stack([a.real, a.imag], axis=-1)
            pairs.append(k)
        elif a.dtype.name not in _SAVABLE:
            raise TypeError(f"save: {k!r} has dtype {a.dtype.name}, which safetensors cannot "
                            f"hold; it holds {', '.join(_SAVABLE)} (and complex128, "
                            "as float64 pairs)")
        h = B.backend_of(a).to_host(a)
        arrays[k] = h if h.flags.c_contiguous else h.copy(order="C")  # keeps 0-d arrays 0-d
        if isinstance(v, Tensor):
            first[id(v._data)] = (v._data, k)  # (the array kept, so its id stays its own)
    header = {_META_KEY: _metadata_json(metadata)}
    if tree is not None:
        header[_TREE_KEY] = json.dumps(tree)
    if aliases:
        header[_ALIAS_KEY] = json.dumps(aliases)
    if pairs:
        header[_C128_KEY] = json.dumps(pairs)
    if tree is None:  # torch.load gives the names back in the order they were saved
        header[_ORDER_KEY] = json.dumps(list(state))
    data = save(arrays, metadata=header)
    if _is_file_object(path, "write"):
        path.write(data)
    else:
        atomic_write(path, data)


def _is_file_object(f, method: str) -> bool:
    """Whether ``f`` is a file object (it has ``method``) rather than a path."""
    if isinstance(f, (str, bytes, os.PathLike)):
        return False
    if not callable(getattr(f, method, None)):
        raise TypeError(f"{'save' if method == 'write' else 'load'}: expected a path or a binary "
                        f"file object with .{method}(), got {type(f).__name__}")
    return True


_CONVERT = ("nodegrad reads safetensors files only and never unpickles; convert it where it can "
            "be trusted, e.g. `safetensors.torch.save_file(torch.load(f, weights_only=True), "
            "'model.safetensors')`")


def _not_safetensors(path: Path) -> str | None:
    """Why ``path`` is not a safetensors file, when its first bytes tell (read, never run)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return None  # a safetensors header: its length, then JSON
    if head[:4] == b"PK\x03\x04":  # a zip: torch.save's format, or NumPy's .npz
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any(n.endswith("data.pkl") for n in names):
            return f"load: {path} is a PyTorch torch.save file (a zipped pickle); {_CONVERT}"
        if names and all(n.endswith(".npy") for n in names):
            return (f"load: {path} is a NumPy .npz archive; nodegrad reads safetensors files "
                    "only; convert it with `safetensors.numpy.save_file(dict(numpy.load(f)), "
                    "'model.safetensors')`")
        return f"load: {path} is a zip archive, not a safetensors file"
    if head[:1] == b"\x80" and head[1:2] and head[1] <= 5:  # pickle protocol 2..5
        return (f"load: {path} is a Python pickle (e.g. an old-style torch.save file); "
                f"{_CONVERT}")
    if head[:6] == b"\x93NUMPY":
        return (f"load: {path} is a NumPy .npy file; nodegrad reads safetensors files only; "
                "convert it with `safetensors.numpy.save_file({'name': numpy.load(f)}, "
                "'model.safetensors')`")
    return None


def _header(path: Path) -> dict:
    """A safetensors file's JSON header: each tensor's dtype, shape and byte offsets."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(n))


def _bfloat16_entry(path: Path, header: dict, key: str):
    """Tensor ``key`` of a bfloat16 entry, its bits as they are (safetensors' NumPy reader has
    no bfloat16). Any other dtype NumPy cannot hold is refused by name."""
    entry = header[key]
    if entry["dtype"] != "BF16":
        raise TypeError(f"tensor {key!r} has dtype {entry['dtype']}, which nodegrad cannot hold")
    start, end = entry["data_offsets"]
    with open(path, "rb") as fh:
        base = 8 + int.from_bytes(fh.read(8), "little")
        fh.seek(base + start)
        raw = fh.read(end - start)
    np = B.np
    return np.frombuffer(raw, dtype="<u2").view(B.bfloat16).reshape(entry["shape"]).copy()


def _mapped(mapper, key: str, t: Tensor) -> Tensor:
    """``mapper(t, "cpu")``, ``torch.load``'s callable ``map_location``, which must give a
    tensor."""
    out = mapper(t, "cpu")
    if not isinstance(out, Tensor):
        raise TypeError(f"load: map_location returned {type(out).__name__} for {key!r}; it "
                        "must return a tensor (lambda storage, loc: storage keeps it)")
    return out


def load(path: str | os.PathLike | BinaryIO, device=None, with_metadata: bool = False, *,
         bfloat16_as_float32: bool = False, map_location=None, weights_only: bool = True):
    """Load a safetensors file into a dict of tensors (and the metadata, if asked).

    ``path`` is a file name or a binary file object (``io.BytesIO`` after ``save`` into it,
    as ``torch.load(buffer)`` reads), read from its position to its end.

    bfloat16 entries (PyTorch's ``torch.bfloat16``) load as bfloat16 tensors, bit for bit;
    ``bfloat16_as_float32=True`` gives them as float32 instead (exact: bfloat16 is float32's
    top 16 bits), as nodegrad read them before it had bfloat16.

    ``map_location`` (a device name, ``torch.load``'s keyword) is ``device``; a callable
    (``lambda storage, loc: storage``, as code written for ``torch.load`` passes it) is called
    with each tensor, read onto the CPU, and ``"cpu"``, and must return a tensor to keep;
    ``weights_only`` is taken as ``torch.load`` takes it and changes nothing: nodegrad never
    unpickles, and its nested checkpoints are read the same way either way."""
    from safetensors import safe_open

    mapper = None
    if map_location is not None:
        if device is not None:
            raise TypeError("load: pass device or map_location, not both")
        if callable(map_location) and not isinstance(map_location, Mapping | str):
            mapper, map_location = map_location, None
        elif isinstance(map_location, Mapping):
            raise TypeError(f"load: map_location must name a device (e.g. 'cpu', 'cuda:0') "
                            f"or be a function of (tensor, location), got "
                            f"{type(map_location).__name__}")
        device = map_location
    del weights_only  # never unpickles: the answer is the same either way
    if _is_file_object(path, "read"):
        data = path.read()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"load: the file object must be opened in binary mode; its read() "
                            f"gave {type(data).__name__}, not bytes")
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder) / "checkpoint.safetensors"
            tmp.write_bytes(bytes(data))
            return load(tmp, device, with_metadata, bfloat16_as_float32=bfloat16_as_float32,
                        map_location=mapper)

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"load: no checkpoint at {path}")
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.safetensors"))[:5]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise CheckpointError(f"load: {path} is a directory; give a safetensors file{hint}")
    if (why := _not_safetensors(path)) is not None:
        raise CheckpointError(why)
    try:
        out = {}
        header = None
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            header = _header(path)
            for k in keys:
                dt = header.get(k, {}).get("dtype")
                if dt not in _READABLE:
                    raise CheckpointError(
                        f"load: tensor {k!r} in {path} has dtype {dt}, which nodegrad cannot "
                        "hold (it reads bool, integers, float16/32/64, bfloat16 and "
                        "complex64)")
            for k in keys:
                if header[k]["dtype"] == "BF16":
                    a = _bfloat16_entry(path, header, k)
                    if bfloat16_as_float32:
                        a = a.astype(B.float32)
                else:
                    a = f.get_tensor(k)
                out[k] = a
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"load: {path} is not a readable safetensors checkpoint "
                              f"(truncated or corrupt?): {e}") from e
    if _C128_KEY in meta:
        try:
            for k in json.loads(meta.pop(_C128_KEY)):
                a = out[k]
                if a.dtype != B.float64 or a.shape[-1:] != (2,):
                    raise ValueError(f"{k!r} is {a.dtype} of shape {a.shape}")
                # a view of the pairs, not re + 1j * im (1j * inf would put NaN in the real part)
                out[k] = B.np.ascontiguousarray(a).view(B.np.complex128)[..., 0]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"load: the complex128 tensors recorded in {path} are "
                                  f"unreadable ({e!r})") from e
    be = B.get_backend(device)
    tensors = {k: Tensor._of(be.asarray(v)) for k, v in out.items()}
    if mapper is not None:
        tensors = {k: _mapped(mapper, k, t) for k, t in tensors.items()}
    if _ALIAS_KEY in meta:
        try:
            aliases = json.loads(meta.pop(_ALIAS_KEY))
            for k, target in aliases.items():
                tensors[k] = tensors[target]
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as e:
            raise CheckpointError(f"load: the shared-tensor names in {path} are unreadable "
                                  f"({e!r})") from e
    if _ORDER_KEY in meta:
        try:
            order = json.loads(meta.pop(_ORDER_KEY))
            tensors = {k: tensors[k] for k in order} if sorted(order) == sorted(tensors) \
                else tensors
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"load: the tensor order recorded in {path} is unreadable "
                                  f"({e!r})") from e
    if _TREE_KEY in meta:
        try:
            tensors = _decode_tree(json.loads(meta.pop(_TREE_KEY)), tensors)
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"load: the nesting recorded in {path} is unreadable "
                                  f"({e!r})") from e
    if not with_metadata:
        return tensors
    if _META_KEY not in meta:  # written by another program (e.g. safetensors.torch with
        return tensors, dict(meta)  # metadata=): its string-to-string metadata as it is
    try:
        info = json.loads(meta[_META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"load: metadata in {path} is not valid JSON: {e}") from e
    return tensors, info
