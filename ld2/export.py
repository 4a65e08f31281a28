"""Exporting a study's results in grid order: lite_dist2 JSON, CSV, JSON lines, .npy and PNG.

Used by the API (streamed responses) and the command line (files).

Each block of results is encoded column by column (axis values through a small table of the
indices present, since they repeat), so a million rows never sit whole in memory and cost
about a microsecond each.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ld2.core import models as m
from ld2.core import results
from ld2.core.errors import InvalidInput
from ld2.core.portable import ValueType
from ld2.core.space import Space
from ld2.core.study import StudySpec
from ld2.store.base import ResultBlock, StudyState, Table

Encoder = Callable[[Any], str]


def _portable_json(kind: ValueType) -> Encoder:
    if kind == "bool":
        return lambda v: "true" if v else "false"
    if kind == "int":
        return lambda v: f'"{hex(v)}"'
    return lambda v: f'"{float.hex(v)}"'  # float.hex gives 'inf', '-inf', 'nan' as lite_dist2


def _plain(kind: ValueType, quote_nonfinite: bool) -> Encoder:
    if kind == "bool":
        return lambda v: "true" if v else "false"
    if kind == "int":
        return str
    if not quote_nonfinite:
        return repr
    return lambda v: repr(v) if math.isfinite(v) else f'"{v!r}"'


def column_names(space: Space) -> list[str]:
    """Axis names, with ``x<k>`` for unnamed axes."""
    return [a.name if a.name is not None else f"x{k}" for k, a in enumerate(space.axes)]


def _param_columns(space: Space, start: int, count: int, enc: list[Encoder]) -> list[list[str]]:
    out = []
    for axis, idx, e in zip(space.axes, space.axis_indices(start, count), enc, strict=True):
        ids = idx.tolist()
        lo, hi = min(ids), max(ids)
        table = [e(v) for v in axis.values(np.arange(lo, hi + 1, dtype=np.int64)).tolist()]
        out.append([table[i - lo] for i in ids])
    return out


def _result_columns(values: np.ndarray, enc: Encoder) -> list[list[str]]:
    if values.ndim == 1:
        return [[enc(v) for v in values.tolist()]]
    return [[enc(v) for v in values[:, j].tolist()] for j in range(values.shape[1])]


class RowEncoder:
    """Turns result blocks into text rows of one format."""

    def __init__(self, space: Space, value_type: ValueType, fmt: str) -> None:
        self.space = space
        self.fmt = fmt
        if fmt == "portable":
            self.param_enc = [_portable_json(a.kind) for a in space.axes]
            self.result_enc = _portable_json(value_type)
        else:
            quote = fmt == "jsonl"
            self.param_enc = [_plain(a.kind, quote) for a in space.axes]
            self.result_enc = _plain(value_type, quote)
        self.names = column_names(space)

    def rows(self, block: ResultBlock) -> list[str]:
        cols = _param_columns(self.space, block.start, block.count, self.param_enc)
        res = _result_columns(block.values, self.result_enc)
        if self.fmt == "portable":
            return ["[" + ",".join(r) + "]" for r in zip(*cols, *res, strict=True)]
        if self.fmt == "csv":
            return [",".join(r) + "\n" for r in zip(*cols, *res, strict=True)]
        keys = [json.dumps(n) for n in self.names]
        head = [f'{{"flat":{block.start + k}' for k in range(block.count)]
        out = []
        vector = block.values.ndim == 2
        for k, row in enumerate(zip(*cols, strict=True)):
            params = "".join(f",{key}:{v}" for key, v in zip(keys, row, strict=True))
            result = "[" + ",".join(c[k] for c in res) + "]" if vector else res[0][k]
            out.append(f'{head[k]}{params},"result":{result}}}\n')
        return out


def csv_header(space: Space, vector_len: int | None) -> str:
    names = column_names(space)
    results = ["result"] if vector_len is None else [f"result_{j}" for j in range(vector_len)]
    return ",".join(names + results) + "\n"


async def json_rows(encoder: RowEncoder, blocks: AsyncIterator[ResultBlock]) -> AsyncIterator[str]:
    """The rows of a MappingsStorage ``values`` list, comma-separated, block by block."""
    first = True
    async for block in blocks:
        text = ",".join(encoder.rows(block))
        if text:
            yield text if first else "," + text
            first = False


def npy_dtype(space: Space, value_type: ValueType, vector_len: int | None) -> np.dtype[Any]:
    kinds = {"bool": "?", "int": "<i8", "float": "<f8"}
    fields: list[Any] = [
        (name, kinds[a.kind]) for name, a in zip(column_names(space), space.axes, strict=True)
    ]
    fields.append(("result", kinds[value_type]) if vector_len is None else
                  ("result", kinds[value_type], (vector_len,)))  # fmt: skip
    return np.dtype(fields)


def npy_header(dtype: np.dtype[Any], rows: int) -> bytes:
    """A .npy v1 header for a 1-D structured array of `rows` records."""
    from numpy.lib import format as npformat

    header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows,)}
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def npy_records(space: Space, dtype: np.dtype[Any], block: ResultBlock, limit: int) -> bytes:
    n = min(block.count, limit)
    out = np.empty(n, dtype=dtype)
    for name, arr in zip(column_names(space), space.arrays(block.start, n), strict=True):
        if arr.dtype == object:
            raise OverflowError(f"axis {name!r} has ints beyond int64; use csv or jsonl")
        out[name] = arr
    values = block.values[:n]
    if values.dtype == object:
        raise OverflowError("results hold ints beyond int64; use csv or jsonl")
    out["result"] = values
    return out.tobytes()


def chunks(parts: Iterable[str], size: int = 1 << 16) -> Iterable[bytes]:
    """Join small strings into ~64 KiB byte chunks for the response stream."""
    buf: list[str] = []
    n = 0
    for p in parts:
        buf.append(p)
        n += len(p)
        if n >= size:
            yield "".join(buf).encode()
            buf, n = [], 0
    if buf:
        yield "".join(buf).encode()


async def selected_blocks(table: Table, state: StudyState) -> AsyncIterator[ResultBlock]:
    """All results, or for find_exact / minimize just the row that answers the study."""
    single = state.hit_flat if state.spec.strategy == "find_exact" else state.best_flat
    if state.spec.strategy == "all_calculation":
        async for block in table.iter_results(state.study_id):
            yield block
        return
    if single is None:
        return
    async for block in table.iter_results(state.study_id):
        if block.start <= single < block.start + block.count:
            off = single - block.start
            yield ResultBlock(single, block.values[off : off + 1])
            return


async def storage_stream(table: Table, state: StudyState) -> AsyncIterator[bytes]:
    spec = state.spec
    params_info, result_info = results.info_templates(spec.space, spec.value_type, state.vector_len)
    placeholder = m.MappingsStorage.model_construct(
        params_info=params_info, result_info=result_info, values=[["__ld2_rows__"]]
    )
    storage = m.StudyStorage.model_construct(
        **{name: getattr(spec.registry, name) for name in m.StudyCommon.model_fields},
        study_id=state.study_id,
        registered_timestamp=state.registered_at,
        parameter_space=state.summary().parameter_space,
        done_timestamp=state.finished_at or state.registered_at,
        results=placeholder,
        done_grids=state.done,
        trial_repository=m.TrialRepositoryModel(type="normal", save_dir=f"ld2:{state.study_id}"),
    )
    text = m.StudyResponse.model_construct(status="done", result=storage).model_dump_json(
        warnings=False
    )
    head, tail = text.split('["__ld2_rows__"]')
    yield head.encode()
    encoder = RowEncoder(spec.space, spec.value_type, "portable")
    async for part in json_rows(encoder, selected_blocks(table, state)):
        yield part.encode()
    yield tail.encode()


# -- files (the command line's `ld2 result -o …`) ------------------------------

FORMATS = ("csv", "jsonl", "json", "npy", "png")


def check_output(path: Path, spec: StudySpec | None = None) -> str:
    """Check an output path before any work is done; returns its format.

    The format comes from the suffix; a missing directory is created; a PNG needs a finite
    2-D study with scalar results (checked when `spec` is given)."""
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        shown = f"{fmt!r}" if fmt else "none"
        raise InvalidInput(
            str(path), f"unknown format (suffix {shown}); use .{', .'.join(FORMATS)}"
        )
    if path.is_dir():
        raise InvalidInput(str(path), "is a directory; give a file name")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidInput(str(path), f"{parent} is not a directory") from None
    except OSError as err:
        msg = f"cannot create the directory {parent}: {err.strerror}"
        raise InvalidInput(str(path), msg) from None
    if not os.access(parent, os.W_OK):
        raise InvalidInput(str(path), f"the directory {parent} is not writable")
    if (
        fmt == "png"
        and spec is not None
        and (spec.space.dim != 2 or spec.total is None or spec.vector)
    ):
        raise InvalidInput(str(path), "a PNG needs a finite 2-D study with scalar results")
    return fmt


async def write_results(table: Table, state: StudyState, path: Path) -> int:
    """Write the study's registered results to `path`, the format taken from its suffix.

    Returns the number of points registered when `state` was read. ``json`` is lite_dist2's
    ``GET /study`` answer (done studies only); ``png`` is a heat map of a 2-D study (axis 0
    down, axis 1 across). The file appears whole or not at all (written aside, then renamed).
    """
    fmt = check_output(path, state.spec)
    if fmt == "json" and state.status != "done":
        raise InvalidInput(
            str(path), "the study is not done yet: use csv, jsonl or npy for partial results"
        )
    aside = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        if fmt == "png":
            written = await _write_png(table, state, aside)
        else:
            parts = (
                storage_stream(table, state) if fmt == "json" else results_stream(table, state, fmt)
            )
            with open(aside, "wb") as out:
                async for part in parts:
                    out.write(part)
            written = state.done
        os.replace(aside, path)
    finally:
        aside.unlink(missing_ok=True)
    return written


async def results_stream(table: Table, state: StudyState, fmt: str) -> AsyncIterator[bytes]:
    """csv, jsonl or npy bytes of the registered results in grid order (partial while running;
    npy holds exactly the points registered when `state` was read)."""
    spec = state.spec
    if fmt == "npy":
        dtype = npy_dtype(
            spec.space, spec.value_type, state.vector_len or (0 if spec.vector else None)
        )
        left = state.done
        yield npy_header(dtype, left)
        async for block in table.iter_results(state.study_id):
            if left <= 0:
                break
            yield npy_records(spec.space, dtype, block, left)
            left -= block.count
        return
    encoder = RowEncoder(spec.space, spec.value_type, fmt)
    if fmt == "csv":
        yield csv_header(spec.space, state.vector_len if spec.vector else None).encode()
    async for block in table.iter_results(state.study_id):
        for chunk in chunks(encoder.rows(block)):
            yield chunk


_STOPS = np.array(  # dark blue → teal → yellow → white
    [[13, 8, 135], [33, 145, 140], [253, 231, 37], [255, 255, 255]], dtype=np.float64
)


async def _write_png(table: Table, state: StudyState, path: Path) -> int:
    space = state.spec.space
    if space.dim != 2 or space.total is None or state.spec.vector:
        raise InvalidInput(str(path), "a PNG needs a finite 2-D study with scalar results")
    rows, cols = int(space.sizes[0] or 0), int(space.sizes[1] or 0)
    grid = np.full(rows * cols, np.nan)
    written = 0
    async for block in table.iter_results(state.study_id):
        grid[block.start : block.start + block.count] = block.values.astype(np.float64)
        written += block.count
    finite = np.isfinite(grid)
    lo, hi = (np.min(grid[finite]), np.max(grid[finite])) if finite.any() else (0.0, 1.0)
    t = np.where(finite, (grid - lo) / (hi - lo if hi > lo else 1.0), 0.0) * (len(_STOPS) - 1)
    k = np.minimum(t.astype(np.int64), len(_STOPS) - 2)
    frac = (t - k)[:, None]
    rgb = _STOPS[k] * (1 - frac) + _STOPS[k + 1] * frac
    rgb[~finite] = 0
    pixels = rgb.astype(np.uint8).reshape(rows, cols, 3)
    path.write_bytes(png_bytes(pixels))
    return written


def png_bytes(pixels: np.ndarray) -> bytes:
    """A truecolour PNG of an ``(h, w, 3)`` uint8 array (no dependency beyond zlib)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
