"""Weights kept beside the ModelProto, never copied through protobuf.

A loaded model is a light ``ModelProto`` whose large initializers are *stubs* (name, type, dims,
``data_location = EXTERNAL`` at the pseudo location :data:`MEMORY`) plus a mapping name -> numpy
array holding their data. Reading scans the protobuf wire format and reads each raw tensor straight
into its own aligned array (the model's bytes are never held twice); saving streams the arrays into
the file behind hand-written field headers; onnxruntime gets them as zero-copy feeds of a graph
where stubs are inputs. A stub that leaks into onnx or onnxruntime fails loudly: its location is
not a file.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import GraphProto, ModelProto, TensorProto, helper, numpy_helper

from pruning_core.errors import ModelLoadError
from pruning_core.ir import limits

MEMORY = "spa:memory"
INLINE_MAX = 1024  # elements: tensors up to this size (shape constants) stay in the proto
PROTO_LIMIT = 1_800_000_000  # protobuf caps a message at 2 GiB: bigger models save external data

# protobuf field numbers (onnx.proto)
MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW, TENSOR_LOCATION = 1, 2, 8, 9, 14
LEN = 2  # wire type of length-delimited fields


@dataclass
class LightModel:
    """A ModelProto with stub initializers and the arrays behind them."""

    proto: ModelProto
    arrays: Mapping[str, np.ndarray]

    def full(self) -> ModelProto:
        return materialize(self.proto, self.arrays)

    def save(self, path: str | os.PathLike[str]) -> None:
        save(self.proto, self.arrays, Path(path))

    def feeds(self) -> dict[str, np.ndarray]:
        """The stubs' data, as onnxruntime feeds of :func:`as_inputs` (zero-copy)."""
        return {t.name: self.arrays[t.name] for t in self.proto.graph.initializer if is_stub(t)}


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """Fresh numpy allocations without transparent-huge-page advice inside the block.

    numpy advises every large allocation for huge pages; under the kernel's common
    ``defrag=madvise`` policy each first touch then compacts memory synchronously, which made
    loading, surgery and saving 1.5-3x slower in a fresh process (measured on ViT-B, 330 MB).
    One pass over the weights gains nothing from huge pages. The previous advice is restored."""
    try:
        from numpy._core import multiarray as ma
        set_advice = ma._set_madvise_hugepage
    except (ImportError, AttributeError):  # another numpy layout: leave its default alone
        yield
        return
    previous = set_advice(False)
    try:
        yield
    finally:
        set_advice(previous)


# --------------------------------------------------------------------------------- stubs


def is_stub(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == MEMORY for e in t.external_data)


def stub(name: str, arr: np.ndarray, data_type: int | None = None) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = data_type if data_type is not None else helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    _mark(t)
    return t


def _mark(t: TensorProto) -> None:
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    e = t.external_data.add()
    e.key, e.value = "location", MEMORY


def plain_dtype(data_type: int) -> np.dtype | None:
    """The numpy dtype whose bytes are the tensor's raw data, or None (strings, bfloat16, float8...)."""
    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        return None
    return dt if dt.kind in "fiub" and dt.itemsize in (1, 2, 4, 8) else None


def strip(m: ModelProto, arrays: dict[str, np.ndarray]) -> None:
    """Turn every large inline initializer of ``m`` into a stub; its data goes to ``arrays``
    (an array already there under that name is taken as its value)."""
    for t in m.graph.initializer:
        if is_stub(t) or t.data_location == TensorProto.EXTERNAL or plain_dtype(t.data_type) is None:
            continue
        if int(np.prod(t.dims, dtype=np.int64)) <= INLINE_MAX:
            continue
        if t.name not in arrays or arrays[t.name].shape != tuple(t.dims):
            arr = numpy_helper.to_array(t)
            arr.flags.writeable = False
            arrays[t.name] = arr
        _mark(t)


def materialize(proto: ModelProto, arrays: Mapping[str, np.ndarray]) -> ModelProto:
    """A complete ModelProto (a copy): every stub filled with its array's bytes."""
    m = ModelProto()
    m.CopyFrom(proto)
    for t in m.graph.initializer:
        if is_stub(t):
            arr = _checked(t, arrays)
            t.ClearField("data_location")
            del t.external_data[:]
            t.raw_data = np.ascontiguousarray(arr).tobytes()
    return m


def as_inputs(m: ModelProto, inline_max: int | None = None) -> ModelProto:
    """The graph with every stub (and, given ``inline_max``, every initializer larger than that)
    as a typed graph input; nothing else of the model is copied. For shape inference and the
    checker (no weights serialized), and for onnxruntime sessions fed with
    :meth:`LightModel.feeds` (stubs only)."""
    sk = ModelProto()
    sk.ir_version = m.ir_version
    sk.opset_import.extend(m.opset_import)
    sk.functions.extend(m.functions)
    graph = sk.graph
    graph.name = m.graph.name
    graph.node.extend(m.graph.node)
    graph.input.extend(m.graph.input)
    graph.output.extend(m.graph.output)
    for t in m.graph.initializer:
        large = inline_max is not None and int(np.prod(t.dims, dtype=np.int64)) > inline_max
        if is_stub(t) or large:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            graph.initializer.append(t)
    return sk


def _checked(t: TensorProto, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    arr = arrays.get(t.name)
    if arr is None:
        raise ValueError(f"no data for initializer {t.name!r}")
    want = plain_dtype(t.data_type)
    if arr.shape != tuple(t.dims) or arr.dtype != want:
        raise ValueError(f"initializer {t.name!r}: data {arr.dtype}{arr.shape} does not match its "
                         f"declaration {want}{tuple(t.dims)}")
    return arr


# ------------------------------------------------------------------------------ wire format


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, field start, payload start, field end) over buf[start:end]."""
    pos = start
    while pos < end:
        key, p = _varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            _, q = _varint(buf, p)
        elif wt == 1:
            q = p + 8
        elif wt == LEN:
            n, p = _varint(buf, p)
            q = p + n
        elif wt == 5:
            q = p + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if q > end or field == 0:
            raise ValueError("truncated or malformed message")
        yield field, wt, pos, p, q
        pos = q


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wt: int = LEN) -> bytes:
    return _enc_varint(field << 3 | wt)


# ---------------------------------------------------------------------------------- reading


def read(path: str | os.PathLike[str],
         max_external: int | None = None) -> tuple[ModelProto, dict[str, np.ndarray]]:
    """Read an ONNX file as a light model: large raw initializers become stubs whose data is
    read into aligned arrays. External data is read only from inside the model's own folder, and
    at most ``max_external`` bytes of it in total (default ``limits.max_unpacked_bytes()``)."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelLoadError(f"not a file: {p}")
    arrays: dict[str, np.ndarray] = {}
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ModelLoadError(f"{p.name} is not a valid ONNX model (empty file)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                m = _parse(mm, f, arrays)
            except ModelLoadError:
                raise
            except Exception as e:  # malformed wire data, protobuf DecodeError
                raise ModelLoadError(f"{p.name} is not a valid ONNX model (its bytes do not parse as an ONNX "
                                      f"protobuf: {e})") from None
    if not m.graph.node:
        raise ModelLoadError(f"{p.name} is not a valid ONNX model (empty graph)")
    cap = limits.max_unpacked_bytes() if max_external is None else max_external
    _read_external(m, p.resolve().parent, arrays, cap)
    return m, arrays


def _parse(mm: mmap.mmap, f, arrays: dict[str, np.ndarray]) -> ModelProto:
    head, graph_parts = [], []
    for field, wt, fs, ps, fe in _fields(mm, 0, len(mm)):
        if field == MODEL_GRAPH and wt == LEN:
            for gfield, gwt, gfs, gps, gfe in _fields(mm, ps, fe):
                if gfield == GRAPH_INITIALIZER and gwt == LEN:
                    graph_parts.append(_initializer(mm, f, gfs, gps, gfe, arrays))
                else:
                    graph_parts.append(mm[gfs:gfe])
        else:
            head.append(mm[fs:fe])
    m = ModelProto.FromString(b"".join(head))
    m.graph.CopyFrom(GraphProto.FromString(b"".join(graph_parts)))
    return m


def _initializer(mm: mmap.mmap, f, fs: int, ps: int, fe: int, arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of one initializer field: as is, or re-encoded as a stub with its data read out."""
    raw = None
    rest = []
    for field, wt, tfs, tps, tfe in _fields(mm, ps, fe):
        if field == TENSOR_RAW and wt == LEN:
            raw = (tps, tfe)  # the last occurrence wins, as in protobuf
        else:
            rest.append(mm[tfs:tfe])
    if raw is None or raw[1] - raw[0] <= INLINE_MAX:  # bytes >= elements: surely small
        return mm[fs:fe]
    t = TensorProto.FromString(b"".join(rest))
    dt = plain_dtype(t.data_type)
    n = int(np.prod(t.dims, dtype=np.int64))
    if dt is None or n <= INLINE_MAX or n * dt.itemsize != raw[1] - raw[0]:
        return mm[fs:fe]  # unusual tensors take the plain protobuf path
    arr = np.empty(tuple(t.dims), dtype=dt)
    f.seek(raw[0])
    if f.readinto(memoryview(arr.reshape(-1).view(np.uint8))) != arr.nbytes:
        raise ModelLoadError(f"initializer {t.name!r} is truncated")
    arr.flags.writeable = False
    arrays[t.name] = arr
    _mark(t)
    body = t.SerializeToString()
    return _key(GRAPH_INITIALIZER) + _enc_varint(len(body)) + body


def _read_external(m: ModelProto, base: Path, arrays: dict[str, np.ndarray], cap: int) -> None:
    """Tensors with external data (large models): validated location, read into arrays."""
    attr_tensors = [a.t for node in m.graph.node for a in node.attribute
                    if a.type == a.TENSOR and a.t.data_location == TensorProto.EXTERNAL]
    inits = [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL and not is_stub(t)]
    targets = [_external_target(t, base) for t in attr_tensors + inits]  # all checked before any read
    places = [_placement(t, target) for t, target in zip(inits, targets[len(attr_tensors):], strict=True)]
    # Each tensor fits in its file, but many may declare the same bytes: bound the sum, still before
    # allocating anything.
    total = sum(nbytes for _, _, nbytes in places)
    total += sum(_attr_bytes(t, tg) for t, tg in zip(attr_tensors, targets[:len(attr_tensors)], strict=True))
    if total > cap:
        raise ModelLoadError(
            f"the model declares {total} bytes of external data, more than the limit of {cap} bytes")
    if attr_tensors:  # rare: Constant values stored outside; onnx reads them (path checked above)
        import onnx.external_data_helper as edh

        for t in attr_tensors:
            edh.load_external_data_for_tensor(t, str(base))
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
    for t, target, (dt, offset, _) in zip(inits, targets[len(attr_tensors):], places, strict=True):
        arr = np.empty(tuple(t.dims), dtype=dt)
        with open(target, "rb") as f:
            f.seek(offset)
            if f.readinto(memoryview(arr.reshape(-1).view(np.uint8))) != arr.nbytes:
                raise ModelLoadError(f"external data of {t.name!r} is truncated in {target.name!r}")
        arr.flags.writeable = False
        if arr.size <= INLINE_MAX:
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
            t.raw_data = arr.tobytes()
        else:
            arrays[t.name] = arr
            _mark(t)


def _offset_length(t: TensorProto) -> tuple[dict[str, str], int, int]:
    info = {e.key: e.value for e in t.external_data}
    try:
        return info, int(info.get("offset", 0) or 0), int(info.get("length", 0) or 0)
    except ValueError:
        raise ModelLoadError(f"external data of {t.name!r} has a malformed offset or length") from None


def _placement(t: TensorProto, target: Path) -> tuple[np.dtype, int, int]:
    """(dtype, offset, bytes) of an external initializer, checked against its file before allocating."""
    info, offset, length = _offset_length(t)
    dt = plain_dtype(t.data_type)
    if dt is None:
        raise ModelLoadError(f"external data of {t.name!r}: unsupported data type {t.data_type}")
    nbytes = math.prod(int(d) for d in t.dims) * dt.itemsize  # Python ints: no int64 overflow
    if length and length != nbytes:
        raise ModelLoadError(f"external data of {t.name!r}: length {length} != {nbytes} bytes")
    if offset < 0 or offset + nbytes > target.stat().st_size:
        raise ModelLoadError(f"external data of {t.name!r} is truncated in {info.get('location')!r}")
    return dt, offset, nbytes


def _attr_bytes(t: TensorProto, target: Path) -> int:
    """Bytes a Constant's external value would take: dims x itemsize, else its length, else its file."""
    _, offset, length = _offset_length(t)
    dt = plain_dtype(t.data_type)
    if dt is not None:
        return math.prod(int(d) for d in t.dims) * dt.itemsize
    return length or max(target.stat().st_size - offset, 0)


def _external_target(t: TensorProto, base: Path) -> Path:
    loc = next((e.value for e in t.external_data if e.key == "location"), "")
    target = (base / loc).resolve()
    if not loc or os.path.isabs(loc) or ".." in Path(loc).parts or base not in target.parents:
        raise ModelLoadError(f"external data location {loc!r} of {t.name!r} leaves the model's folder")
    if not target.is_file():
        raise ModelLoadError(f"external data file {loc!r} of {t.name!r} is missing: it must lie beside the model; "
                             "to upload, send the model and its data files in one .zip (spa submit and the "
                             "Python client do this)")
    return target


# ----------------------------------------------------------------------------------- saving


def save(proto: ModelProto, arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """Write the model with every stub's data, streaming each array into the file (no serialized
    copy of the model is built). Beyond protobuf's 2 GiB the data goes to ``<name>.data``
    beside it, page-aligned. Written to a temporary name, then renamed."""
    head = ModelProto()
    head.CopyFrom(proto)
    head.ClearField("graph")
    graph = GraphProto()
    graph.CopyFrom(proto.graph)
    del graph.initializer[:]
    stubs = [t for t in proto.graph.initializer if is_stub(t)]
    external = sum(_checked(t, arrays).nbytes for t in stubs) > PROTO_LIMIT
    data_name = path.name + ".data"
    parts: list[tuple[bytes, np.ndarray | None]] = []
    offset = 0
    for t in proto.graph.initializer:
        if not is_stub(t):
            body = t.SerializeToString()
            parts.append((_key(GRAPH_INITIALIZER) + _enc_varint(len(body)) + body, None))
            continue
        arr = _checked(t, arrays)
        meta = TensorProto()
        meta.CopyFrom(t)
        meta.ClearField("data_location")
        del meta.external_data[:]
        if external:
            offset = -(-offset // 4096) * 4096
            meta.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(arr.nbytes))):
                e = meta.external_data.add()
                e.key, e.value = k, v
            offset += arr.nbytes
            body = meta.SerializeToString()
            parts.append((_key(GRAPH_INITIALIZER) + _enc_varint(len(body)) + body, arr))
        else:
            body = meta.SerializeToString()
            raw_head = _key(TENSOR_RAW) + _enc_varint(arr.nbytes)
            size = len(body) + len(raw_head) + arr.nbytes
            parts.append((_key(GRAPH_INITIALIZER) + _enc_varint(size) + body + raw_head, arr))
    gbody = graph.SerializeToString()
    glen = len(gbody) + sum(len(h) + (a.nbytes if a is not None and not external else 0) for h, a in parts)
    tmp = path.with_name(path.name + ".part")
    data_tmp = path.with_name(data_name + ".part")
    try:
        with open(tmp, "wb") as f:
            f.write(head.SerializeToString())
            f.write(_key(MODEL_GRAPH) + _enc_varint(glen))
            f.write(gbody)
            for h, a in parts:
                f.write(h)
                if a is not None and not external:
                    _write_array(f, a)
        if external:
            with open(data_tmp, "wb") as f:
                for _, a in parts:
                    if a is not None:
                        f.seek(-(-f.tell() // 4096) * 4096)
                        _write_array(f, a)
            os.replace(data_tmp, path.with_name(data_name))
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, data_tmp):
            leftover.unlink(missing_ok=True)


def _write_array(f, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":  # ONNX raw data is little-endian
        a = a.astype(a.dtype.newbyteorder("<"))
    f.write(memoryview(a.reshape(-1).view(np.uint8)))
