"""Trial results: checked, packed into compact bytes, and turned back into lite_dist2 rows.

Results are stored by flat index, so parameter values never need storing: they follow from the
index. A packed block is a 12-byte header and a little-endian numpy buffer of the narrowest
exact dtype (int8…int64, or fixed-width two's complement for ints beyond int64).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ld2.core import portable
from ld2.core.errors import InvalidInput
from ld2.core.models import Mapping, ScalarValue, VectorValue
from ld2.core.portable import ValueType
from ld2.core.space import Space

_HEADER = struct.Struct("<cBxxII")  # kind, big-int width, pad, rows, columns (0 = scalar)
_INT_KINDS = (  # narrowest first: mandelbrot's counts ≤ 255 take one byte a point
    (b"B", np.uint8),
    (b"b", np.int8),
    (b"H", np.uint16),
    (b"h", np.int16),
    (b"I", np.uint32),
    (b"i", np.int32),
    (b"q", np.int64),
)
_INT_BOUNDS = tuple(
    (code, dt, int(np.iinfo(dt).min), int(np.iinfo(dt).max)) for code, dt in _INT_KINDS
)
_DTYPES = {b"?": np.dtype("?"), b"d": np.dtype("<f8")} | {
    k: np.dtype(t).newbyteorder("<") for k, t in _INT_KINDS
}


def coerce(
    raw: Any, value_type: ValueType, vector: bool, count: int, where: str = "result"
) -> np.ndarray:
    """Check a computation's output against the declared type and shape, and normalise it.

    Returns shape ``(count,)`` or ``(count, k)``; dtype bool, float64, int64 or object (huge
    ints). A float for an int study, or a wrong length, is an error, not a silent cast.
    """
    if vector:
        rows = [list(r) for r in raw] if not isinstance(raw, np.ndarray) else None
        arr = np.asarray(raw) if rows is None else _rows_array(rows, where)
        if arr.ndim != 2:
            raise InvalidInput(where, f"vector results need a 2-D array, got shape {arr.shape}")
        if arr.shape[0] and arr.shape[1] == 0:  # (stored, they could never be read back)
            raise InvalidInput(where, "vector results need at least one value a point")
    else:
        arr = raw if isinstance(raw, np.ndarray) else _scalars_array(list(raw), where)
        if arr.ndim != 1:
            raise InvalidInput(where, f"scalar results need a 1-D array, got shape {arr.shape}")
    if len(arr) != count:
        raise InvalidInput(where, f"expected {count} results, got {len(arr)}")
    return _typed(arr, value_type, where)


def _scalars_array(values: list[Any], where: str) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _rows_array(rows: list[list[Any]], where: str) -> np.ndarray:
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise InvalidInput(where, f"vector results of different lengths: {sorted(widths)}")
    out = np.empty((len(rows), widths.pop() if widths else 0), dtype=object)
    for i, r in enumerate(rows):
        out[i, :] = r
    return out


def _typed(arr: np.ndarray, value_type: ValueType, where: str) -> np.ndarray:
    kind = arr.dtype.kind
    if value_type == "float":
        if kind == "f":
            return arr.astype(np.float64, copy=False)
        if kind == "O" and all(isinstance(v, float | np.floating) for v in arr.ravel().tolist()):
            return arr.astype(np.float64)
    elif value_type == "bool":
        if kind == "b":
            return arr
        if kind == "O" and all(isinstance(v, bool | np.bool_) for v in arr.ravel().tolist()):
            return arr.astype(bool)
    else:
        if kind in "iu":
            if kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
                return arr.astype(object)
            return arr.astype(np.int64, copy=False)
        if kind == "O":
            items = arr.ravel().tolist()
            if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in items):
                ints = [int(v) for v in items]
                if all(-(2**63) <= v < 2**63 for v in ints):
                    return np.array(ints, dtype=np.int64).reshape(arr.shape)
                out = np.empty(arr.shape, dtype=object)
                out.ravel()[:] = ints
                return out
    raise InvalidInput(where, f"expected {value_type} values, got {_describe(arr)}")


def _describe(arr: np.ndarray) -> str:
    if arr.dtype.kind != "O":
        return f"dtype {arr.dtype}"
    kinds = sorted({type(v).__name__ for v in arr.ravel().tolist()})
    return "values of type " + "/".join(kinds)


# -- packing -------------------------------------------------------------------------------------


def pack(values: np.ndarray) -> bytes:
    """Compact bytes of a typed results array (as returned by `coerce`)."""
    rows = values.shape[0]
    cols = values.shape[1] if values.ndim == 2 else 0
    kind = values.dtype.kind
    if kind == "b":
        return _HEADER.pack(b"?", 0, rows, cols) + values.astype("?").tobytes()
    if kind == "f":
        return _HEADER.pack(b"d", 0, rows, cols) + values.astype("<f8").tobytes()
    if kind in "iu":
        lo = int(values.min()) if values.size else 0
        hi = int(values.max()) if values.size else 0
        for code, dt, low, high in _INT_BOUNDS:
            if low <= lo and hi <= high:
                return (
                    _HEADER.pack(code, 0, rows, cols)
                    + values.astype(np.dtype(dt).newbyteorder("<")).tobytes()
                )
    ints = [int(v) for v in values.ravel().tolist()]
    width = max((v.bit_length() // 8 + 1 for v in ints), default=1)
    body = b"".join(v.to_bytes(width, "little", signed=True) for v in ints)
    return _HEADER.pack(b"O", width, rows, cols) + body


def unpack(data: bytes) -> np.ndarray:
    code, width, rows, cols = _HEADER.unpack_from(data)
    shape = (rows, cols) if cols else (rows,)
    body = memoryview(data)[_HEADER.size :]
    if code == b"O":
        n = rows * max(cols, 1)
        out = np.empty(n, dtype=object)
        out[:] = [
            int.from_bytes(body[i * width : (i + 1) * width], "little", signed=True)
            for i in range(n)
        ]
        return out.reshape(shape)
    arr = np.frombuffer(body, dtype=_DTYPES[code]).reshape(shape)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    return arr


# -- lite_dist2 mappings ---------------------------------------------------------------------------


def from_mappings(
    space: Space,
    start: int,
    count: int,
    mappings: Sequence[Mapping],
    value_type: ValueType,
    vector: bool,
    vector_len: int | None = None,
) -> np.ndarray:
    """Results of an uploaded trial, in flat order, checked to cover exactly its points.

    Each mapping's params are matched to grid indices (floats within a few ulps), so a point
    outside ``[start, start+count)``, a repeated or missing point, a wrong type or a vector of
    another length is refused with the offending mapping named.
    """
    if len(mappings) != count:
        raise InvalidInput(
            "results", f"expected {count} mappings for this trial, got {len(mappings)}"
        )
    seen = np.zeros(count, dtype=bool)
    decoded: list[Any] = [None] * count
    for k, m in enumerate(mappings):
        where = f"results[{k}]"
        if len(m.params) != space.dim:
            raise InvalidInput(
                f"{where}.params", f"expected {space.dim} params, got {len(m.params)}"
            )
        values = []
        for d, (p, axis) in enumerate(zip(m.params, space.axes, strict=True)):
            if p.value_type != axis.kind:
                raise InvalidInput(f"{where}.params[{d}].value_type", f"expected {axis.kind!r}")
            values.append(portable.decode(p.value, p.value_type))
        flat = space.flat_of_point(values)
        if flat is None or not start <= flat < start + count:
            raise InvalidInput(f"{where}.params", "this point is not part of the trial")
        offset = flat - start
        if seen[offset]:
            raise InvalidInput(f"{where}.params", "this point appears twice")
        seen[offset] = True
        decoded[offset] = _decode_result(
            m.result, value_type, vector, vector_len, f"{where}.result"
        )
        if vector and vector_len is None:
            vector_len = len(decoded[offset])
    return coerce(decoded, value_type, vector, count)


def _decode_result(
    result: ScalarValue | VectorValue,
    value_type: ValueType,
    vector: bool,
    n: int | None,
    where: str,
) -> Any:
    if result.value_type != value_type:
        raise InvalidInput(
            f"{where}.value_type", f"expected {value_type!r}, got {result.value_type!r}"
        )
    if isinstance(result, VectorValue) != vector:
        raise InvalidInput(f"{where}.type", f"expected {'vector' if vector else 'scalar'}")
    if isinstance(result, VectorValue):
        if n is not None and len(result.values) != n:
            raise InvalidInput(f"{where}.values", f"expected {n} values, got {len(result.values)}")
        return [portable.decode(v, value_type) for v in result.values]
    return portable.decode(result.value, value_type)


def to_mappings(
    space: Space, start: int, values: np.ndarray, value_type: ValueType
) -> list[Mapping]:
    """lite_dist2 mappings for results stored from flat `start` (what its Worker uploads)."""
    params = [col.tolist() for col in space.arrays(start, len(values))]
    out = []
    for k, row in enumerate(values.tolist()):
        ps = [
            ScalarValue(value_type=a.kind, value=portable.encode(col[k], a.kind), name=a.name)
            for a, col in zip(space.axes, params, strict=True)
        ]
        if isinstance(row, list):
            result: ScalarValue | VectorValue = VectorValue(
                value_type=value_type, values=[portable.encode(v, value_type) for v in row]
            )
        else:
            result = ScalarValue(value_type=value_type, value=portable.encode(row, value_type))
        out.append(Mapping(params=ps, result=result))
    return out


def rows(
    space: Space, start: int, values: np.ndarray, value_type: ValueType
) -> Iterator[list[portable.Portable]]:
    """``MappingsStorage.values`` rows: the point's params, then its result(s), all portable."""
    encoders = [_encoder(a.kind) for a in space.axes]
    enc_result = _encoder(value_type)
    params = [col.tolist() for col in space.arrays(start, len(values))]
    for k, row in enumerate(values.tolist()):
        out = [enc(col[k]) for enc, col in zip(encoders, params, strict=True)]
        if isinstance(row, list):
            out.extend(enc_result(v) for v in row)
        else:
            out.append(enc_result(row))
        yield out


def _encoder(value_type: ValueType) -> Any:
    if value_type == "float":
        return portable.encode_float
    if value_type == "int":
        return portable.encode_int
    return bool


def info_templates(
    space: Space, value_type: ValueType, vector_len: int | None
) -> tuple[list[ScalarValue], ScalarValue | VectorValue]:
    """``params_info`` and ``result_info`` of a MappingsStorage (dummy values, as lite_dist2)."""
    zero = portable.ZERO
    params = [ScalarValue(value_type=a.kind, value=zero[a.kind], name=a.name) for a in space.axes]
    if vector_len is None:
        return params, ScalarValue(value_type=value_type, value=zero[value_type])
    return params, VectorValue(value_type=value_type, values=[zero[value_type]] * vector_len)


_INT_CODES = frozenset(code for code, dt in _DTYPES.items() if dt.kind in "iu")
_PACKED_KINDS = {"float": frozenset({b"d"}), "bool": frozenset({b"?"}), "int": _INT_CODES | {b"O"}}


def _kind_name(code: bytes) -> str:
    if code == b"O":
        return "integers wider than 64 bits"
    dtype = _DTYPES.get(code)
    return repr(code.decode("latin-1")) if dtype is None else f"dtype {dtype.name}"


def unpack_checked(body: bytes, value_type: ValueType, vector: bool, count: int) -> np.ndarray:
    """`pack`'s bytes from a client (ld2's packed uploads), refused unless they are exactly
    `count` values of `value_type` (scalars, or vectors when `vector`): the header's kind, its
    width, rows and columns, and the body's length are each checked (`InvalidInput` naming
    ``body.<part>``). A vector's length is checked against the study's earlier results by the
    table (``vector_length``), as for a lite_dist2 upload."""
    header = _HEADER
    if len(body) < header.size:
        raise InvalidInput(
            "body", f"{len(body)} bytes; packed results start with a {header.size}-byte header"
        )
    code, width, rows, cols = header.unpack_from(body)
    if code not in _PACKED_KINDS[value_type]:
        raise InvalidInput("body.kind", f"expected {value_type} values, got {_kind_name(code)}")
    if code == b"O":
        if width == 0:
            raise InvalidInput("body.width", "wide integers need a width of 1 byte or more")
        size = width
    else:
        if width != 0:
            raise InvalidInput("body.width", f"must be 0 for {_kind_name(code)}, got {width}")
        size = _DTYPES[code].itemsize
    if vector and cols == 0:
        raise InvalidInput("body.columns", "vector results need at least one value a point")
    if not vector and cols != 0:
        raise InvalidInput("body.columns", f"this study's results are scalars (0), got {cols}")
    if rows != count:
        raise InvalidInput("body.rows", f"expected {count} results (the trial's count), got {rows}")
    expected = header.size + rows * max(cols, 1) * size
    if len(body) != expected:
        raise InvalidInput(
            "body", f"expected {expected} bytes for {rows}×{max(cols, 1)} values, got {len(body)}"
        )
    if code == b"?" and rows and int(np.frombuffer(body, np.uint8, offset=header.size).max()) > 1:
        raise InvalidInput("body", "bool values must be the bytes 0 or 1")
    return unpack(body)
