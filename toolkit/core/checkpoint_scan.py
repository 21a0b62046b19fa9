"""What a checkpoint's pickle would construct, read from its opcodes before anything is unpickled.

torch's ``weights_only`` unpickler with ultralytics' allow-list runs no function from the file,
but it still *calls* an allowed class when the pickle asks for it (``REDUCE`` on a class is a
constructor call). A checkpoint saved by ultralytics never does that: its modules are rebuilt
with ``NEWOBJ`` (``cls.__new__``) and their state set with ``BUILD``; no ``__init__`` runs. A
constructor call is how a hostile file reaches the network or the disk through an allowed class:
``TorchVision("resnet18", "DEFAULT")`` downloads weights into ``$TORCH_HOME``,
``DetectionModel("https://...yaml")`` fetches its configuration. So a checkpoint is refused when
its pickle

- calls an ultralytics model class, ``ultralytics.nn.*`` (``REDUCE``/``OBJ``/``INST`` on it), or
- names a class that loads weights from elsewhere at all (``TorchVision``; anything of
  ``torchvision`` or ``torch.hub``).

A constructor call is also how a file makes the loader allocate what it asks for:
``torch.nn.Linear(100000, 100000)``, ``bytearray(10**11)``, ``torch.FloatStorage(10**11)`` are all on
the unpickler's allow-list and take 40 GB when called. So every call (``REDUCE``/``OBJ``/``INST``)
must be one of ``_SAFE_CALLS`` - the rebuild functions of ``torch.save`` and the plain data of an
ultralytics checkpoint, none of which allocates beyond the bytes in the file - and an object rebuilt
by ``NEWOBJ`` gets no arguments. The bytes themselves are bounded by the file: a zip entry must be
stored uncompressed (``torch.save`` never compresses) and no larger than the file.

Only opcodes are read (``pickletools``); no module named in the file is imported.
"""
from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

_MARK = object()
# classes that fetch weights or code from elsewhere whenever they are built (by any path)
_REACHING_OUT = (".TorchVision",)
_REACHING_OUT_MODULES = ("torchvision.", "torch.hub.")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
               "STRING"}
_CALLS = {"REDUCE", "OBJ", "INST"}
_INT_OPS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG"}
_storage_cap = [1 << 62]   # elements the storages may declare: at most the file's bytes (set per file)
# the model classes (layers, whole models) whose constructors build networks, read configurations, fetch
# weights; a training checkpoint's plain data (IterableSimpleNamespace of its arguments) is rebuilt by a call
_MODEL_CLASSES = ("ultralytics.nn.",)
# what a checkpoint may call: torch.save's rebuild functions (views of storages read from the file) and plain
# data; none allocates more than its arguments, which are in the file (not _rebuild_from_type_v2: it calls
# whatever its first argument names - Linear(20000, 20000) again)
_SAFE_CALLS = frozenset({
    "collections.OrderedDict", "collections.Counter", "builtins.set", "__builtin__.set", "builtins.frozenset",
    "builtins.complex", "_codecs.encode", "builtins.getattr", "__builtin__.getattr", "torch.Size", "torch.device",
    "torch.serialization._get_layout", "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch.nn.parameter.Parameter", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
    "ultralytics.utils.IterableSimpleNamespace", "ultralytics.yolo.utils.IterableSimpleNamespace",
    "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib._local.PosixPath", "pathlib._local.WindowsPath",
    "types.SimpleNamespace", "datetime.datetime", "datetime.date", "datetime.timedelta"})


def _scan_pickle(ops) -> tuple[list[str], list[str]]:
    """Constructor calls of ultralytics classes in one pickle stream, and every global it names.

    A small simulation of the unpickler's stack and memo (values reduced to 'a string', 'a global',
    'an object'), so a name assembled from memoised strings is resolved as the unpickler would.
    """
    stack: list[object] = []
    memo: dict[int, object] = {}
    found: list[str] = []
    names: list[str] = []
    storage = [0]   # elements of the storages the file declares (a storage is allocated at its declared size)

    def pop_to_mark() -> list[object]:
        items = []
        while stack:
            item = stack.pop()
            if item is _MARK:
                break
            items.append(item)
        return items[::-1]

    for op, arg, _ in ops:
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            ref = ("global", f"{module}.{attr}")
            names.append(ref[1])
            if name == "INST":
                pop_to_mark()
                if ref[1].startswith(_MODEL_CLASSES):
                    found.append(f"it calls {ref[1]}(...)")
                stack.append(("obj",))
            else:
                stack.append(ref)
            continue
        if name == "STACK_GLOBAL":
            attr, module = (stack.pop() if stack else None), (stack.pop() if stack else None)
            text = [x[1] if isinstance(x, tuple) and x[0] == "str" else "?" for x in (module, attr)]
            stack.append(("global", f"{text[0]}.{text[1]}"))
            names.append(f"{text[0]}.{text[1]}")
            continue
        if name in _STRING_OPS:
            stack.append(("str", str(arg)))
            continue
        if name == "MARK":
            stack.append(_MARK)
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1] if stack else None
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(arg), ("obj",)))
            continue
        if name in _CALLS:
            if name == "REDUCE":
                stack.pop() if stack else None
                func = stack.pop() if stack else None
            else:  # OBJ: MARK cls args... OBJ
                items = pop_to_mark()
                func = items[0] if items else None
            called = func[1] if isinstance(func, tuple) and func[0] == "global" else None
            if called is not None and called.startswith(_MODEL_CLASSES):
                found.append(f"it calls {called}(...)")
            elif called not in _SAFE_CALLS:
                found.append(f"it calls {called or 'an object it built'}(...), which can allocate whatever the "
                             "file asks for")
            stack.append(("obj",))
            continue
        if name in ("NEWOBJ", "NEWOBJ_EX"):   # cls.__new__(cls, *args): a module is rebuilt with no arguments
            kwargs = stack.pop() if name == "NEWOBJ_EX" and stack else ("empty",)
            args = stack.pop() if stack else None
            cls = stack.pop() if stack else None
            if args != ("empty",) or kwargs not in (("empty",), ("emptydict",)):
                what = cls[1] if isinstance(cls, tuple) and cls[0] == "global" else "an object"
                found.append(f"it builds {what} with arguments, which can allocate whatever the file asks for")
            stack.append(("obj",))
            continue
        if name == "EMPTY_TUPLE":
            stack.append(("empty",))
            continue
        if name in _INT_OPS:
            stack.append(("int", arg if isinstance(arg, int) else 0))
            continue
        if name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
            items = pop_to_mark() if name == "TUPLE" else [stack.pop() if stack else None
                                                            for _ in range(int(name[-1]))][::-1]
            stack.append(("tuple", items))
            continue
        if name in ("BINPERSID", "PERSID"):  # ('storage', type, key, location, numel): allocated as declared
            pid = stack.pop() if name == "BINPERSID" and stack else None
            items = pid[1] if isinstance(pid, tuple) and pid[0] == "tuple" else []
            if len(items) >= 5 and items[0] == ("str", "storage") and isinstance(items[4], tuple) \
                    and items[4][0] == "int":   # numel: 5th of the zip and of the legacy format's id
                storage[0] += max(0, items[4][1])
            stack.append(("obj",))
            continue
        if name == "EMPTY_DICT":
            stack.append(("emptydict",))
            continue
        if name == "STOP":
            break
        # any other opcode: pop what it consumes (to the mark when it takes one), push what it makes
        before = list(op.stack_before)
        if pickletools.markobject in before:
            below = before.index(pickletools.markobject)
            pop_to_mark()
            del stack[len(stack) - min(below, len(stack)):]
        elif before:
            del stack[len(stack) - min(len(before), len(stack)):]
        stack.extend(("obj",) for _ in op.stack_after)
    found += [f"its storages declare {storage[0]:,} elements"] if storage[0] > _storage_cap[0] else []
    return found, names


class _Oversized(ValueError):
    pass


def _pickles(path: Path) -> list[bytes]:
    """The pickle streams of a checkpoint: ``*/data.pkl`` of a zip file, else the legacy file's first ones.

    _Oversized: a zip entry that is compressed or claims more bytes than the file holds (the loader would
    allocate what the entry claims)."""
    if zipfile.is_zipfile(path):
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
                    raise _Oversized(f"its entry {info.filename[:60]} is compressed or larger than the file "
                                     f"({info.file_size:,} bytes), which torch.save never writes")
            return [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    data = path.read_bytes()
    streams, stream = [], io.BytesIO(data)
    for _ in range(5):  # legacy torch.save: magic, protocol, sys info, the object, storage keys
        start = stream.tell()
        try:
            for _op in pickletools.genops(stream):
                pass
        except Exception:  # not (or no more) pickle: the loader reports what it is
            break
        streams.append(data[start:stream.tell()])
    return streams


def reaching_out(path: str | Path) -> list[str]:
    """Why loading ``path`` could reach the network or write outside the workspace ([]: it cannot)."""
    problems: list[str] = []
    try:
        streams = _pickles(Path(path))
    except _Oversized as exc:
        return [str(exc)]
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return []
    try:
        _storage_cap[0] = Path(path).stat().st_size   # a stored element takes a byte at least
    except OSError:
        return problems
    for blob in streams:
        try:
            ops = list(pickletools.genops(blob))
        except Exception:  # a damaged pickle: the loader refuses it with its own message
            continue
        calls, names = _scan_pickle(ops)
        problems += calls
        for name in names:
            if name.endswith(_REACHING_OUT) or name.startswith(_REACHING_OUT_MODULES):
                problems.append(f"it builds {name}, which loads weights from the network")
            elif "?" in name:  # a name computed at load time: no checkpoint written by torch.save does that
                problems.append("it names a class the scan cannot read")
    return list(dict.fromkeys(problems))


def holds_detection_model(path: str | Path) -> bool:
    """Whether the checkpoint's pickle names ultralytics' ``DetectionModel`` (read from the opcodes, nothing
    unpickled): a quick early check of a ``.pt`` given as an architecture, before any training starts."""
    try:
        streams = _pickles(Path(path))
    except (OSError, zipfile.BadZipFile, RuntimeError, _Oversized):
        return False
    for blob in streams:
        try:
            _, names = _scan_pickle(list(pickletools.genops(blob)))
        except Exception:  # a damaged pickle
            continue
        if any(name.startswith("ultralytics.nn.tasks.") and name.endswith("DetectionModel") for name in names):
            return True
    return False


def architecture_file(path: str | Path) -> str | None:
    """The architecture yaml a checkpoint was built from (``yolov8n.yaml``), read from the pickle's
    strings (the model's ``yaml['yaml_file']``) without unpickling anything; None when not found."""
    try:
        streams = _pickles(Path(path))
    except (OSError, zipfile.BadZipFile, RuntimeError, _Oversized):
        return None
    for blob in streams:
        previous = None
        try:
            for op, arg, _ in pickletools.genops(blob):
                if op.name in _STRING_OPS:
                    if previous == "yaml_file" and str(arg).strip():
                        return str(arg)
                    previous = str(arg)
                elif op.name not in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                    previous = None
        except Exception:  # a damaged pickle: the loader reports it
            continue
    return None
