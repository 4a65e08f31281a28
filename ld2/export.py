"""Exporting a study's results in grid order: lite_dist2 JSON, CSV, JSON lines, .npy, and
pictures: a PNG of a 2-D study (no dependency), SVG / PDF figures (matplotlib, the ``plot`` extra).

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

from ld2 import colormap
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

FORMATS = ("csv", "jsonl", "json", "npy", "png", "svg", "pdf")
FIGURES = ("svg", "pdf")  # drawn by matplotlib
PLOT_EXTRA = "pip install 'ld2[plot]' (or uv sync --extra plot)"
MAX_PICTURE_POINTS = 1 << 26  # a picture's grid is held whole in memory (8 bytes a point)


def check_output(path: Path, spec: StudySpec | None = None) -> str:
    """Check an output path before any work is done; returns its format.

    The format comes from the suffix; a missing directory is created; an SVG / PDF figure
    needs matplotlib. With `spec` given, also whether the study can be pictured: a PNG needs a
    finite 2-D study, a figure a finite 1-D or 2-D one."""
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        shown = f"{fmt!r}" if fmt else "none"
        raise InvalidInput(
            str(path), f"unknown format (suffix {shown}); use .{', .'.join(FORMATS)}"
        )
    if path.is_dir():
        raise InvalidInput(str(path), "is a directory; give a file name")
    if spec is not None:
        problem = _picture_problem(fmt, spec)
        if problem:
            raise InvalidInput(str(path), problem)
    if fmt in FIGURES:
        _need_matplotlib(path, fmt)
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
    return fmt


def _picture_problem(fmt: str, spec: StudySpec) -> str | None:
    """Why `spec` cannot be drawn as `fmt` (None: it can, or `fmt` is no picture)."""
    dim, total = spec.space.dim, spec.total
    if fmt == "png" and (dim != 2 or total is None):
        what = "infinite" if total is None else f"{dim}-D"
        hint = "; draw a 1-D study as .svg or .pdf" if dim == 1 and total is not None else ""
        return f"a PNG needs a finite 2-D study (this one is {what}){hint}"
    if fmt in FIGURES and (dim not in (1, 2) or total is None):
        what = "infinite" if total is None else f"{dim}-D"
        return f"an .{fmt} figure needs a finite 1-D or 2-D study (this one is {what})"
    if fmt in ("png", *FIGURES) and total is not None and total > MAX_PICTURE_POINTS:
        return (
            f"a picture of {total:,} points is too big (at most {MAX_PICTURE_POINTS:,}); "
            "write .npy or .csv instead"
        )
    return None


def _need_matplotlib(path: Path, fmt: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        msg = f"an .{fmt} figure needs matplotlib, which is not installed: {PLOT_EXTRA}"
        raise InvalidInput(str(path), msg) from None


async def write_results(table: Table, state: StudyState, path: Path) -> int:
    """Write the study's registered results to `path`, the format taken from its suffix.

    Returns the number of points registered when `state` was read. ``json`` is lite_dist2's
    ``GET /study`` answer (done studies only); ``png`` is a heat map of a 2-D study in
    :mod:`ld2.colormap`'s colours and orientation (axis 0 down from its start, axis 1 across;
    points without a result grey); ``svg`` / ``pdf`` are matplotlib figures of the same (a
    line plot for a 1-D study) labelled in the study's coordinates. The file appears whole or
    not at all (written aside, then renamed).
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
        elif fmt in FIGURES:
            written = await _write_figure(table, state, aside, fmt)
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


async def picture_grid(
    table: Table, state: StudyState, components: bool = False
) -> tuple[np.ndarray, int]:
    """A finite study's results as floats shaped ``sizes + (k,)``, NaN where no result is
    registered; and how many points were read. ``k`` is 1: the result, or a vector result's
    first component (what a 2-D picture shows) — all the components with `components`."""
    spec = state.spec
    sizes = [int(s or 0) for s in spec.space.sizes]
    k = max(1, state.vector_len or 1) if spec.vector and components else 1
    grid = np.full((math.prod(sizes), k), np.nan)
    written = 0
    async for block in table.iter_results(state.study_id):
        values = colormap.to_float(block.values)
        if values.ndim == 1:
            values = values[:, None]
        width = min(k, values.shape[1])
        grid[block.start : block.start + block.count, :width] = values[:, :width]
        written += block.count
    return grid.reshape(*sizes, k), written


def colour_scale(state: StudyState, values: np.ndarray) -> tuple[float, float, bool]:
    """How a picture colours `values`: the values at the map's two ends and whether the scale
    is logarithmic. false / true for booleans; else the finite min / max, on a log scale when
    :func:`ld2.colormap.suits_log` says so (an escape-time count, say)."""
    if state.spec.value_type == "bool":
        return 0.0, 1.0, False
    seen = values[np.isfinite(values)]
    if not seen.size:
        return 0.0, 1.0, False
    return float(seen.min()), float(seen.max()), colormap.suits_log(seen)


async def _write_png(table: Table, state: StudyState, path: Path) -> int:
    problem = _picture_problem("png", state.spec)
    if problem:
        raise InvalidInput(str(path), problem)
    grid, written = await picture_grid(table, state)
    values = grid[..., 0]  # a vector result is coloured by its first component
    lo, hi, log = colour_scale(state, values)
    pixels = colormap.rgb(values, lo, hi, log=log)
    text = {"Title": state.label, "Description": _png_description(state, lo, hi, log)}
    path.write_bytes(png_bytes(pixels, text))
    return written


def _png_description(state: StudyState, lo: float, hi: float, log: bool) -> str:
    """What the PNG shows, in words (its iTXt ``Description``)."""
    space = state.spec.space
    names = column_names(space)
    ends = [
        (a.value(0), a.value(int(n or 1) - 1)) for a, n in zip(space.axes, space.sizes, strict=True)
    ]
    result = "result[0]" if state.spec.vector else "result"
    scale = "log10 scale" if log else "linear scale"
    return (
        f"{result} in ld2's colour map (viridis), {scale}: {lo!r} darkest, {hi!r} lightest; "
        f"grey: no result. Rows: {names[0]} from {ends[0][0]!r} (top) to {ends[0][1]!r}; "
        f"columns: {names[1]} from {ends[1][0]!r} (left) to {ends[1][1]!r}."
    )


def _axis_coords(axis: Any, size: int) -> tuple[np.ndarray, float]:
    """An axis's values as floats (false / true as 0 / 1) and its step."""
    values = colormap.to_float(axis.values(np.arange(size, dtype=np.int64)))
    step = 1.0 if axis.kind == "bool" else float(axis.step)
    return values, step


def _bool_ticks(set_ticks: Callable[..., Any], kind: str) -> None:
    """false / true at 0 / 1 on an axis (or colour bar) of booleans."""
    if kind == "bool":
        set_ticks([0.0, 1.0], labels=["false", "true"])


async def _write_figure(table: Table, state: StudyState, path: Path, fmt: str) -> int:
    """A matplotlib figure: a 2-D study as an image (the PNG's pixels, axes in the study's
    coordinates, a colour bar), a 1-D study as a line plot (one line per vector component)."""
    problem = _picture_problem(fmt, state.spec)
    if problem:
        raise InvalidInput(str(path), problem)
    _need_matplotlib(path, fmt)
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, LogNorm, Normalize
    from matplotlib.figure import Figure

    grid, written = await picture_grid(table, state, components=state.spec.space.dim == 1)
    spec = state.spec
    space = spec.space
    names = column_names(space)
    sizes = [int(s or 0) for s in space.sizes]
    missing = int(np.isnan(grid[..., 0]).sum())
    title = state.label
    if missing:
        shown = "grey" if space.dim == 2 else "gaps"
        title += f" ({missing:,} point{'s' if missing > 1 else ''} without a result: {shown})"
    lut = np.array(colormap.LUT, dtype=np.float64) / 255.0
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ld2"}):
        if space.dim == 2:
            rows, cols = sizes
            aspect = min(2.0, max(0.5, rows / cols))
            fig = Figure(figsize=(6.4, 5.0 * aspect + 0.6), layout="constrained")
            ax = fig.add_subplot()
            values = grid[..., 0]
            lo, hi, log = colour_scale(state, values)
            (ys, dy), (xs, dx) = (
                _axis_coords(a, n) for a, n in zip(space.axes, sizes, strict=True)
            )
            extent = (xs[0] - dx / 2, xs[-1] + dx / 2, ys[-1] + dy / 2, ys[0] - dy / 2)
            ax.imshow(colormap.rgb(values, lo, hi, log=log), extent=extent, origin="upper",
                      interpolation="nearest", aspect="auto")  # fmt: skip
            ax.set_xlabel(names[1])
            ax.set_ylabel(names[0])
            _bool_ticks(ax.set_xticks, space.axes[1].kind)
            _bool_ticks(ax.set_yticks, space.axes[0].kind)
            if lo == hi:  # one value: the middle colour, as colormap.rgb gives it
                norm = Normalize(lo - 0.5, hi + 0.5)
            else:
                norm = LogNorm(lo, hi) if log else Normalize(lo, hi)
            mappable = ScalarMappable(norm=norm, cmap=ListedColormap(lut, name="ld2"))
            label = "result[0]" if spec.vector else "result"
            bar = fig.colorbar(mappable, ax=ax, label=label + (" (log scale)" if log else ""))
            _bool_ticks(bar.set_ticks, spec.value_type)
        else:
            fig = Figure(figsize=(6.4, 4.0), layout="constrained")
            ax = fig.add_subplot()
            xs, _ = _axis_coords(space.axes[0], sizes[0])
            k = grid.shape[-1]
            picks = np.linspace(0, 200, k).astype(int) if k > 1 else [0]
            marker = "o" if sizes[0] <= 64 else None
            drawstyle = "steps-mid" if spec.value_type == "bool" else "default"
            for j in range(k):
                label = f"result[{j}]" if spec.vector else "result"
                ax.plot(xs, grid[:, j], color=lut[picks[j]], marker=marker, markersize=3,
                        drawstyle=drawstyle, label=label)  # fmt: skip
            if k > 1:
                ax.legend()
            ax.set_xlabel(names[0])
            if spec.value_type != "bool" and colormap.suits_log(grid):
                ax.set_yscale("log")
            ax.set_ylabel("result")
            _bool_ticks(ax.set_xticks, space.axes[0].kind)
            _bool_ticks(ax.set_yticks, spec.value_type)
            ax.grid(alpha=0.3)
        ax.set_title(title)
        metadata = {"Date": None} if fmt == "svg" else {"CreationDate": None}
        fig.savefig(path, format=fmt, metadata=metadata)
    return written


def png_bytes(pixels: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """A truecolour PNG of an ``(h, w, 3)`` uint8 array (no dependency beyond zlib), with
    `text` as UTF-8 iTXt chunks (keywords: 1 to 79 Latin-1 letters, e.g. ``Title``)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    notes = b"".join(
        chunk(b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode())
        for key, value in (text or {}).items()
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + notes
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
