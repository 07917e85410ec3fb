"""Read the weights out of a pickled whole-model checkpoint without running any of its code.

The paper's authors saved their best models with ``torch.save(model)`` where ``model`` was an
``nn.DataParallel`` wrapping ``ImprovedUNet3D``, a class defined in their notebook (module
``__main__``). Such a file pickles the *object*, not just its tensors, so reading it the usual way
needs their class, and ``torch.load(weights_only=True)`` refuses it. This module gets the state dict
out anyway, safely.

Threat model. A pickle is a small program: its ``GLOBAL``/``STACK_GLOBAL`` opcodes name any importable
object (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) and ``REDUCE`` calls it with
arguments from the file. ``torch.load(weights_only=False)`` of a downloaded checkpoint therefore runs
whatever its author (or whoever replaced the file on the way) wrote. The only defence is to never
import a named module and never call a named object that is not known to be harmless. Here:

* :meth:`RestrictedUnpickler.find_class` never imports anything. It maps a short allow-list of globals
  to this module's own re-implementations (tensor rebuilding, ``OrderedDict``, ``set``, ``torch.device``,
  numpy numbers, ``copyreg``'s object-creation helpers, ...) and every other name to an *inert record
  class*: a fresh subclass of :class:`Record` carrying only the dotted name.
* Creating an instance without calling its constructor (``NEWOBJ``, ``copyreg.__newobj__``,
  ``copyreg._reconstructor``) is how pickle rebuilds ordinary objects such as ``nn.Module``; on a record
  class it makes a :class:`Record`, and ``BUILD`` hands the object's state to
  :meth:`Record.__setstate__`, which only stores it.
* *Calling* a record class (``REDUCE``, ``INST``/``OBJ`` with arguments) is what a malicious
  ``__reduce__`` does, and is refused: the record classes' metaclass raises
  :class:`~brats_utils.errors.CheckpointError` naming the file and the global. So a pickle that would
  have run ``os.system(...)`` stops at that opcode, before anything happens. (This is why the records'
  factories are *classes*: ``NEWOBJ`` insists on a type and calls its ``__new__`` directly, while
  ``REDUCE`` calls the object, which for a class goes through the metaclass's ``__call__``; that is
  where allocating and calling can be told apart without knowing what the name really is.)
* Storages (``persistent_load``) are read as raw bytes from the archive member ``data/<key>`` with the
  dtype of their storage type, and tensors are rebuilt with ``as_strided`` after bounds checks; the
  device the file names (``cuda:0`` for the authors) is ignored, everything lands on the CPU.

What remains possible: a hostile file can still make this reader use memory in proportion to its own
size (compressed archive members are refused, so no zip bomb), or produce a wrong state dict (which
:func:`brats_utils.checkpoints.load_pretrained` then rejects by key and shape). It cannot run code.

Two file layouts are read. torch's zip format (the default since torch 1.6): ``<name>/data.pkl`` (the
pickle), ``<name>/data/<key>`` (one member per storage) and ``<name>/byteorder``. The legacy format
(before 1.6, or ``_use_new_zipfile_serialization=False``): one stream of pickles (magic number,
protocol, system info, the object, the storage keys) followed by the raw storages; there a pickled
model's classes arrive as ``('module', class, file, source)`` persistent ids, whose source code is
ignored. A bare pickle stream without storages is read with the same restrictions.

After unpickling, :func:`state_dict_from_record` walks the records of ``nn.Module`` objects
(``_parameters``, ``_buffers`` minus ``_non_persistent_buffers_set``, ``_modules``) and yields the keys
``model.state_dict()`` would give, ``module.`` prefix of ``DataParallel`` included (``load_pretrained``
strips it).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from brats_utils.errors import CheckpointError

#: Storage classes torch names in its persistent ids, and the element type of each.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64, "UntypedStorage": torch.uint8,
}
_TORCH_DTYPES: dict[str, torch.dtype] = {name: value for name, value in vars(torch).items()
                                         if isinstance(value, torch.dtype)}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a pre-1.6 torch.save stream
_LEGACY_PROTOCOL = 1001


# --- inert records ----------------------------------------------------------------------------


class _RecordType(type):
    """Metaclass of the record classes: allocating is allowed, calling is refused."""

    dotted_name: str
    source: Path | None

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise CheckpointError(f"the pickle calls {cls.dotted_name}, which is not on the allow-list; refused "
                              "without running it", path=cls.source,
                              expected="a checkpoint holding only tensors, containers and plain objects")


class Record(metaclass=_RecordType):
    """An object of a class the reader does not trust: its class's dotted name and its pickled state.

    Attributes:
        args: positional arguments pickle passed to ``__new__`` (usually empty).
        kwargs: keyword arguments of ``NEWOBJ_EX`` (usually empty).
        state: what ``BUILD`` handed over, normally the object's ``__dict__`` (``None`` until then).
    """

    __slots__ = ("args", "kwargs", "state")
    dotted_name = "Record"
    source = None

    def __new__(cls, *args: object, **kwargs: object) -> Record:
        record = object.__new__(cls)
        record.args, record.kwargs, record.state = args, kwargs, None
        return record

    def __setstate__(self, state: object) -> None:
        """Keep the state as data; nothing of the original class's ``__setstate__`` runs."""
        self.state = state

    def __repr__(self) -> str:
        return f"Record({self.dotted_name})"

    @property
    def attributes(self) -> dict[str, Any]:
        """The state as a dict of attributes (``{}`` when the state is not a dict)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slot values) of a class with slots
            parts = [part for part in state if part is not None]
            state = {k: v for part in parts for k, v in part.items()} if all(
                isinstance(part, dict) for part in parts) else None
        return state if isinstance(state, dict) else {}


def _record_class(dotted_name: str, source: Path | None) -> _RecordType:
    """A fresh inert class standing for the global ``dotted_name``."""
    return _RecordType(f"Record[{dotted_name}]", (Record,),
                       {"__slots__": (), "dotted_name": dotted_name, "source": source})


# --- re-implementations of the allow-listed globals ----------------------------------------------


class _Storage:
    """The raw bytes of one storage and the element type its storage class names."""

    def __init__(self, data: bytearray, dtype: torch.dtype) -> None:
        self.data = data
        self.dtype = dtype

    def as_tensor(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The storage as a flat tensor of ``dtype`` (default: its own)."""
        dtype = dtype or self.dtype
        if not self.data:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(self.data, dtype=dtype)


def _check_ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise TypeError(f"{what} must be a tuple of non-negative ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: object, storage_offset: object, size: object, stride: object,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    if not isinstance(storage, _Storage) or type(storage_offset) is not int or storage_offset < 0:
        raise TypeError("a tensor must be rebuilt from a storage of the archive and an int offset")
    size, stride = _check_ints(size, "size"), _check_ints(stride, "stride")
    if len(size) != len(stride):
        raise TypeError(f"size {size} and stride {stride} differ in length")
    flat = storage.as_tensor(dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else -1
    if last >= flat.numel():
        raise ValueError(f"tensor of size {size} reaches element {last} of a storage of {flat.numel()}")
    return flat.as_strided(size, stride, storage_offset)


def _rebuild_tensor_v2(storage: object, storage_offset: object, size: object, stride: object,
                       requires_grad: object, backward_hooks: object,
                       metadata: object = None) -> torch.Tensor:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage: object, storage_offset: object, size: object, stride: object,
                       requires_grad: object, backward_hooks: object, dtype: object,
                       metadata: object = None) -> torch.Tensor:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    return _rebuild_tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object,
                       state: object = None) -> torch.Tensor:
    """A parameter is stored as its data; a state dict holds plain tensors anyway."""
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"a parameter's data must be a tensor, got {data!r}")
    return data


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> object:
    """Tensor subclasses: rebuild the plain tensor with an allow-listed ``func``; drop type and state."""
    if func not in _TENSOR_REBUILDERS or not isinstance(args, tuple):
        raise TypeError(f"_rebuild_from_type_v2 may only call a tensor rebuilder, got {func!r}")
    return func(*args)


def _device(kind: object, index: object = None) -> torch.device:
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise TypeError(f"torch.device takes a string and an optional int, got {kind!r}, {index!r}")
    return torch.device(kind) if index is None else torch.device(kind, index)


def _encode_latin1(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode(text, 'latin1')``: how protocol 2 pickles a ``bytes`` object."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TypeError("_codecs.encode is allowed only as protocol 2's bytes encoding (str, 'latin1')")
    return codecs.encode(text, "latin1")


class _NumpyDtype:
    """A pickled ``numpy.dtype``: its type code and, once ``BUILD`` has run, its byte order."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.byteorder = "="

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise TypeError(f"unexpected numpy dtype state {state!r}")
        self.byteorder = state[1]


def _numpy_dtype(code: object, align: object = False, copy: object = True) -> _NumpyDtype:
    """``numpy.dtype('f8', False, True)``: only numeric and boolean type codes."""
    if not isinstance(code, str) or not re.fullmatch(r"[biufc]\d{1,2}", code):
        raise TypeError(f"only numeric numpy dtypes are read, got {code!r}")
    return _NumpyDtype(code)


def _numpy_scalar(dtype: object, data: object) -> np.generic:
    """``numpy.core.multiarray.scalar(dtype, raw bytes)``: how a numpy number (a metric, say) is pickled."""
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
        raise TypeError("a numpy scalar is rebuilt from a numeric dtype and its bytes")
    np_dtype = np.dtype(dtype.code).newbyteorder(dtype.byteorder)
    if len(data) != np_dtype.itemsize:
        raise ValueError(f"{len(data)} bytes for a numpy {np_dtype} scalar")
    return np.frombuffer(data, dtype=np_dtype)[0]


def _check_record_class(cls: object) -> _RecordType:
    if not isinstance(cls, _RecordType):
        raise TypeError(f"object creation is allowed for recorded classes only, got {cls!r}")
    return cls


def _newobj(cls: object, *args: object) -> Record:
    return _check_record_class(cls).__new__(cls, *args)


def _newobj_ex(cls: object, args: object, kwargs: object) -> Record:
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise TypeError("copyreg.__newobj_ex__ takes a class, a tuple and a dict")
    return _check_record_class(cls).__new__(cls, *args, **kwargs)


def _reconstructor(cls: object, base: object, state: object) -> Record:
    """``copyreg._reconstructor`` (protocols 0 and 1): the base's state is kept as the only argument."""
    record_class = _check_record_class(cls)
    return record_class.__new__(record_class) if state is None else record_class.__new__(record_class, state)


def _container(kind: type) -> Callable[..., object]:
    def build(*args: object) -> object:
        if len(args) > 1 or not all(isinstance(a, (list, tuple, dict, set, frozenset)) for a in args):
            raise TypeError(f"{kind.__name__} may only be built from a plain container")
        return kind(*args)

    return build


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)

#: Globals a pickle may *call*, each mapped to this module's own, argument-checking version.
_SAFE_CALLS: dict[str, Callable[..., object]] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.device": _device,
    "torch.Size": _container(tuple),
    "numpy.dtype": _numpy_dtype,
    "numpy.core.multiarray.scalar": _numpy_scalar,  # numpy 1.x
    "numpy._core.multiarray.scalar": _numpy_scalar,  # numpy 2
    "collections.OrderedDict": _container(OrderedDict),
    "builtins.set": _container(set),
    "builtins.frozenset": _container(frozenset),
    "builtins.list": _container(list),
    "builtins.tuple": _container(tuple),
    "builtins.dict": _container(dict),
    "_codecs.encode": _encode_latin1,
    "copyreg.__newobj__": _newobj,
    "copyreg.__newobj_ex__": _newobj_ex,
    "copyreg._reconstructor": _reconstructor,
}


# --- the unpickler ------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle reader that imports nothing and calls only :data:`_SAFE_CALLS`.

    Args:
        file: the pickle stream.
        storages: ``(key, expected size in bytes) -> buffer`` holding (or, in the legacy format, later
            receiving) a storage's bytes; ``None`` when the stream has none (a persistent id then is
            an error).
        source: the file being read, for error messages.
    """

    def __init__(self, file: io.BufferedIOBase, storages: Callable[[str, int], bytearray] | None,
                 source: Path | None) -> None:
        super().__init__(file)
        self._storages = storages
        self._source = source
        self._loaded: dict[str, _Storage] = {}
        self._records: dict[str, _RecordType] = {}

    def find_class(self, module: str, name: str) -> object:
        """The allow-listed re-implementation, a torch dtype or storage marker, else an inert record class."""
        # protocol 2 (torch's default) writes Python 2 names, e.g. __builtin__.set; map them as pickle does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        dotted = f"{module}.{name}"
        if dotted in _SAFE_CALLS:
            return _SAFE_CALLS[dotted]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]  # only ever used as a persistent id's storage type
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if dotted not in self._records:
            self._records[dotted] = _record_class(dotted, self._source)
        return self._records[dotted]

    def persistent_load(self, pid: object) -> _Storage | _RecordType:
        """A storage ``('storage', storage type, key, location, numel[, None])`` -> its bytes as a
        :class:`_Storage`; the legacy format's ``('module', class, file, source)`` -> the (recorded) class.
        """
        if (isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module"
                and isinstance(pid[1], _RecordType)):
            return pid[1]  # the legacy format also stores the class's source code: never looked at
        if self._storages is None:
            raise CheckpointError("the pickle refers to tensor storages but the file is no torch checkpoint",
                                  path=self._source, expected="a torch.save file")
        if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
                or not isinstance(pid[1], torch.dtype) or not isinstance(pid[2], str)
                or type(pid[4]) is not int or pid[5:] not in ((), (None,))):
            raise CheckpointError(f"malformed storage reference {pid!r}", path=self._source,
                                  expected="('storage', <torch storage class>, key, location, numel)"
                                           " and no storage views")
        dtype, key, numel = pid[1], pid[2], pid[4]
        if key not in self._loaded:
            self._loaded[key] = _Storage(self._storages(key, numel * dtype.itemsize), dtype)
        return self._loaded[key]


def _unpickle(stream: io.BufferedIOBase, storages: Callable[[str, int], bytearray] | None,
              path: Path) -> object:
    try:
        return RestrictedUnpickler(stream, storages, path).load()
    except CheckpointError:
        raise
    except Exception as exc:  # malformed pickle, a refused argument, a storage out of bounds, ...
        raise CheckpointError(f"cannot unpickle ({type(exc).__name__}: {str(exc)[:200]})", path=path,
                              expected="a torch.save file of tensors, containers and plain objects") from exc


def _read_zip(path: Path, archive: zipfile.ZipFile) -> object:
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError("zip file without exactly one <name>/data.pkl", path=path,
                              expected="a torch.save zip archive")
    prefix = pickles[0].removesuffix("data.pkl")

    def member(name: str) -> zipfile.ZipInfo:
        try:
            info = archive.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{name} is missing from the archive", path=path) from None
        if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses; a compressed one may be a bomb
            raise CheckpointError(f"{name} is compressed", path=path,
                                  expected="uncompressed members, as torch writes them")
        return info

    def storage(key: str, nbytes: int) -> bytearray:
        info = member(f"{prefix}data/{key}")
        if info.file_size != nbytes:
            raise CheckpointError(f"storage {key} holds {info.file_size} bytes, its reference says {nbytes}",
                                  path=path)
        return bytearray(archive.read(info))

    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(member(byteorder)) != b"little":
        raise CheckpointError("big-endian checkpoints are not supported", path=path)
    with archive.open(member(pickles[0])) as stream:
        return _unpickle(stream, storage, path)


def _read_legacy(path: Path, file: io.BufferedReader) -> object:
    """The rest of a pre-1.6 file after its magic number: pickles of the protocol version, the system
    info, the object and the storage keys, then each storage as an int64 element count and its bytes.

    The object's storages are only known by size when it is unpickled; they are allocated then (at
    most the file's size in all) and filled in place afterwards, which the tensors see.
    """
    version, info = _unpickle(file, None, path), _unpickle(file, None, path)
    if version != _LEGACY_PROTOCOL or not isinstance(info, dict) or info.get("little_endian") is not True:
        raise CheckpointError(f"unsupported legacy checkpoint (protocol {version!r}, system {info!r})",
                              path=path, expected=f"protocol {_LEGACY_PROTOCOL}, little-endian")
    budget = os.fstat(file.fileno()).st_size
    buffers: dict[str, bytearray] = {}

    def storage(key: str, nbytes: int) -> bytearray:
        nonlocal budget
        if not 0 <= nbytes <= budget:
            raise CheckpointError(f"storage {key} claims {nbytes} bytes, more than the file holds", path=path)
        budget -= nbytes
        return buffers.setdefault(key, bytearray(nbytes))

    obj = _unpickle(file, storage, path)
    keys = _unpickle(file, None, path)
    if (not isinstance(keys, list) or not all(isinstance(key, str) for key in keys)
            or set(keys) != set(buffers)):
        raise CheckpointError("the legacy storage list does not match the storages the object uses",
                              path=path)
    for key in keys:
        buffer = buffers[key]
        file.read(8)  # the element count; the size is already known from the storage's reference
        data = file.read(len(buffer))
        if len(data) != len(buffer):
            raise CheckpointError(f"storage {key} is truncated", path=path)
        buffer[:] = data  # same length: the tensors' views stay valid and now see the data
    return obj


def read_pickled_checkpoint(path: str | os.PathLike) -> object:
    """Everything a ``torch.save`` file holds, with untrusted objects as inert :class:`Record` s.

    Tensors come back as CPU tensors, containers as themselves, ``torch.device`` and dtypes as
    themselves, and every other object (the authors' model, ``DataParallel``, ``Conv3d``, ...) as a
    ``Record`` whose ``dotted_name`` names its class and whose ``state`` is its pickled ``__dict__``.

    Raises:
        CheckpointError: the file is missing, is neither a torch zip archive nor a pickle, is damaged
            or truncated, or its pickle would call anything not on the allow-list (the message names the
            file and the global).
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            if zipfile.is_zipfile(file):
                with zipfile.ZipFile(file) as archive:
                    return _read_zip(path, archive)
            file.seek(0)
            if file.read(1) != pickle.PROTO:
                raise CheckpointError("not a checkpoint: neither a zip archive nor a binary pickle stream",
                                      path=path, expected="a file written by torch.save")
            file.seek(0)
            obj = _unpickle(file, None, path)
            if type(obj) is int and obj == _LEGACY_MAGIC:
                return _read_legacy(path, file)
    except FileNotFoundError:
        raise CheckpointError("checkpoint file not found", path=path) from None
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"damaged zip archive ({exc})", path=path) from exc
    return obj


# --- records of modules -> state dict -------------------------------------------------------------


def _is_module_record(obj: object) -> bool:
    return isinstance(obj, Record) and all(isinstance(obj.attributes.get(name), Mapping)
                                           for name in ("_parameters", "_buffers", "_modules"))


def state_dict_from_record(record: Record, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    """The ``state_dict()`` of a recorded ``nn.Module``: same keys, same order, same tensors.

    Parameters, then persistent buffers, then each child module's entries under ``<name>.``,
    recursively (so ``DataParallel``'s wrapped model appears under ``module.``).

    Raises:
        CheckpointError: ``record`` (or a child) is not a recorded module, or holds a non-tensor weight.
    """
    if not _is_module_record(record):
        raise CheckpointError(f"{prefix or 'the checkpoint'} is not an nn.Module ({record!r})",
                              expected="an object with _parameters, _buffers and _modules")
    attributes = record.attributes
    non_persistent = attributes.get("_non_persistent_buffers_set", set())
    if not isinstance(non_persistent, (set, frozenset)):
        raise CheckpointError(f"{prefix}_non_persistent_buffers_set is {non_persistent!r}, not a set")
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    named = [*attributes["_parameters"].items(),
             *((n, b) for n, b in attributes["_buffers"].items() if n not in non_persistent)]
    for name, tensor in named:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{prefix}{name} is {tensor!r}, not a tensor", expected="tensor weights")
        state[prefix + name] = tensor
    for name, child in attributes["_modules"].items():
        if child is not None:
            state.update(state_dict_from_record(child, f"{prefix}{name}."))
    return state


def read_pickled_state_dict(path: str | os.PathLike) -> OrderedDict[str, torch.Tensor]:
    """The model weights of a checkpoint, whatever ``torch.save`` was given, without running its code.

    Accepts a pickled whole model (``torch.save(model)``, e.g. the authors' ``BratsCV_best.pt``), a
    training checkpoint dict with ``"model_state_dict"`` (the authors' epoch files and ours; the
    optimizer state etc. are read as data and dropped) or a bare state dict. Keys are exactly those of
    ``model.state_dict()``, including a ``module.`` prefix for ``DataParallel``.

    Raises:
        CheckpointError: see :func:`read_pickled_checkpoint`; also when the file holds no model weights.
    """
    path = Path(path)
    obj = read_pickled_checkpoint(path)
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if _is_module_record(obj):
        try:
            return state_dict_from_record(obj)
        except CheckpointError as exc:
            raise CheckpointError(exc.problem, path=path, expected=exc.expected) from None
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in obj.items()):
        return OrderedDict(obj)
    raise CheckpointError(f"checkpoint holds no model weights (found {type(obj).__name__})", path=path,
                          expected="a pickled nn.Module, a state dict or a dict with 'model_state_dict'")
