"""Pictures of a study: `-o x.png` (no dependency), `-o x.svg` / `-o x.pdf` (matplotlib).

Each test runs real `ld2` processes on a private embedded state directory. The PNG is decoded
here (zlib only) and checked pixel by pixel against `ld2.colormap.rgb` of the results, with the
orientation ld2.colormap documents: row i is index i of the first axis (row 0: its start),
column j index j of the second."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ld2 import colormap
from ld2.colormap import LUT, MISSING, rgb
from tests.cli.test_cli import EXAMPLES, _direct_mandelbrot, _small_mandelbrot, ld2

RUNNERS = """
from pathlib import Path

import ld2


@ld2.runner("grid")
def grid(x: int, y: int) -> int:
    Path("started").touch()
    return 10 * x + y


@ld2.runner("holey")
def holey(x: int, y: int) -> int:
    if (x, y) == (2, 0):
        raise ValueError("a hole")
    return 10 * x + y


@ld2.runner("pair")
def pair(x: int, y: int) -> list[int]:
    return [10 * x + y, -x]


@ld2.runner("yes")
def yes(x: int, y: int) -> bool:
    return x > y


@ld2.runner("line")
def line(t: float) -> float:
    return t * t


@ld2.runner("cube")
def cube(a: int, b: int, c: int) -> int:
    Path("started").touch()
    return a
"""

XS = np.arange(5)  # the first axis: x = 0 … 4 (rows)
YS = 3 - np.arange(7)  # the second: y = 3, 2, … -3 (columns; a negative step)


def _study(tmp_path: Path, name: str, capacity: str, axes: list[dict[str, Any]] | None = None,
           **extra: Any) -> Path:  # fmt: skip
    (tmp_path / "runners.py").write_text(RUNNERS)
    data: dict[str, Any] = {
        "required_capacity": [capacity],
        "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
        "result_type": "scalar",
        "result_value_type": "int",
        "parameter_space": {
            "type": "aligned",
            "axes": axes
            or [
                {"name": "x", "type": "int", "size": 5, "start": 0, "step": 1},
                {"name": "y", "type": "int", "size": 7, "start": 3, "step": -1},
            ],
        },
    }
    data.update(extra)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _run(tmp_path: Path, study: Path, *outputs: str) -> subprocess.CompletedProcess[str]:
    args = [a for out in outputs for a in ("-o", out)]
    return ld2("run", str(study), "--import", "runners", "-w", "1", *args,
               env={"LD2_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)  # fmt: skip


def decode_png(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """An (h, w, 3) uint8 array and the iTXt texts of an 8-bit truecolour PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, text, width, height = 8, b"", {}, 0, 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert zlib.crc32(kind + body) == int.from_bytes(data[pos + 8 + n : pos + 12 + n], "big")
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            assert body[8:] == bytes([8, 2, 0, 0, 0])  # 8-bit RGB, no interlace
        elif kind == b"IDAT":
            idat += body
        elif kind == b"iTXt":
            key, rest = body.split(b"\x00", 1)
            flag, _method, rest = rest[0], rest[1], rest[2:]
            assert flag == 0
            _lang, _translated, value = rest.split(b"\x00", 2)
            text[key.decode("latin-1")] = value.decode()
        pos += 12 + n
    assert kind == b"IEND"
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    assert all(raw[r * stride] == 0 for r in range(height))  # filter type None on every row
    rows = b"".join(raw[r * stride + 1 : (r + 1) * stride] for r in range(height))
    return np.frombuffer(rows, np.uint8).reshape(height, width, 3), text


def _svg_texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return ["".join(e.itertext()).strip() for e in root.iter("{http://www.w3.org/2000/svg}text")]


def test_png_pixels_are_the_colours_of_the_results_first_axis_down(tmp_path: Path) -> None:
    out = _run(tmp_path, _study(tmp_path, "g", "grid"), "g.csv", "g.png", "g.svg", "g.pdf")
    assert out.returncode == 0, out.stderr
    pixels, text = decode_png((tmp_path / "g.png").read_bytes())
    assert pixels.shape == (5, 7, 3)  # rows: x (the first axis), columns: y
    results = {(int(r[0]), int(r[1])): int(r[2]) for r in list(csv.reader((tmp_path / "g.csv").open()))[1:]}  # fmt: skip
    colours = rgb(np.array(list(results.values())))  # lo, hi: the results' min and max
    by_point = dict(zip(results, colours.tolist(), strict=True))
    for i, j in [(0, 0), (0, 6), (4, 0), (2, 3), (4, 6), (1, 5)]:
        assert pixels[i, j].tolist() == by_point[(int(XS[i]), int(YS[j]))], (i, j)
    assert (pixels == rgb(10 * XS[:, None] + YS[None, :])).all()
    assert pixels[0, 6].tolist() == list(LUT[0])  # x = 0, y = -3: the smallest, top right
    assert pixels[4, 0].tolist() == list(LUT[255])  # x = 4, y = 3: the largest, bottom left
    assert text["Title"] == "g"
    assert "Rows: x from 0 (top) to 4; columns: y from 3 (left) to -3." in text["Description"]
    assert "linear scale: -3.0 darkest, 43.0 lightest" in text["Description"]
    # the same file through an independent decoder
    image = pytest.importorskip("matplotlib.image").imread(tmp_path / "g.png")
    assert (np.round(image[..., :3] * 255).astype(np.uint8) == pixels).all()

    texts = _svg_texts(tmp_path / "g.svg")
    assert {"x", "y", "g", "result"} <= set(texts), texts
    pdf = (tmp_path / "g.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF") and len(pdf) > 2000

    again = ld2("result", "g", "-o", str(tmp_path / "again.svg"),
                env={"LD2_STATE_DIR": str(tmp_path / "state")})  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.svg").read_bytes() == (tmp_path / "g.svg").read_bytes()


def test_points_without_a_result_are_grey(tmp_path: Path) -> None:
    out = _run(tmp_path, _study(tmp_path, "h", "holey"), "h.png", "h.svg")
    assert out.returncode == 3, out.stdout + out.stderr  # a failed point: incomplete
    assert "x = 2, y = 0" in out.stdout + out.stderr
    pixels, _ = decode_png((tmp_path / "h.png").read_bytes())
    assert pixels[2, 3].tolist() == list(MISSING)  # x = 2 is row 2, y = 0 column 3
    expected = rgb(np.where((XS[:, None] == 2) & (YS[None, :] == 0), np.nan,
                            10 * XS[:, None] + YS[None, :]))  # fmt: skip
    assert (pixels == expected).all()
    assert "h (1 point without a result: grey)" in _svg_texts(tmp_path / "h.svg")


def test_vector_results_by_their_first_component_booleans_by_the_ends(tmp_path: Path) -> None:
    out = _run(tmp_path, _study(tmp_path, "v", "pair", result_type="vector"), "v.png", "v.svg")
    assert out.returncode == 0, out.stderr
    pixels, text = decode_png((tmp_path / "v.png").read_bytes())
    assert (pixels == rgb(10 * XS[:, None] + YS[None, :])).all()
    assert text["Description"].startswith("result[0] in ld2's colour map")
    assert "result[0]" in _svg_texts(tmp_path / "v.svg")

    out = _run(tmp_path, _study(tmp_path, "b", "yes", result_value_type="bool"), "b.png", "b.svg")
    assert out.returncode == 0, out.stderr
    pixels, _ = decode_png((tmp_path / "b.png").read_bytes())
    ends = np.array([LUT[0], LUT[255]], dtype=np.uint8)
    assert (pixels == ends[(XS[:, None] > YS[None, :]).astype(int)]).all()
    assert {"false", "true"} <= set(_svg_texts(tmp_path / "b.svg"))


def test_the_mandelbrot_example_is_upright_on_a_log_scale(tmp_path: Path) -> None:
    study = _small_mandelbrot(tmp_path, n=40)
    out = ld2("run", str(study), "-w", "1", "-o", "m.png",
              env={"LD2_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    counts = np.array(_direct_mandelbrot(study)).reshape(40, 40)  # rows y, columns x
    assert colormap.suits_log(counts)  # most points escape at once: a log scale shows bands
    pixels, text = decode_png((tmp_path / "m.png").read_bytes())
    assert (pixels == rgb(counts, log=True)).all()
    assert "log10 scale: 1.0 darkest, 255.0 lightest" in text["Description"]
    ys = -1.5 + np.arange(40) * 3.0 / 40
    zero = int(np.flatnonzero(ys == 0.0)[0])
    assert pixels[zero, 0].tolist() == list(LUT[255])  # c = -2 (left edge, y = 0) is in the set
    assert pixels[0, 0].tolist() == list(LUT[0])  # top left corner escapes at once


def test_a_1d_study_is_a_line_plot(tmp_path: Path) -> None:
    axes = [{"name": "t", "type": "float", "size": 30, "start": -1.5, "step": 0.1}]
    study = _study(tmp_path, "l", "line", axes, result_value_type="float")
    out = _run(tmp_path, study, "l.svg", "l.pdf")
    assert out.returncode == 0, out.stderr
    assert {"t", "result", "l"} <= set(_svg_texts(tmp_path / "l.svg"))
    assert (tmp_path / "l.pdf").read_bytes().startswith(b"%PDF-")
    png = _run(tmp_path, study, "l.png")
    assert png.returncode == 2 and "draw a 1-D study as .svg or .pdf" in png.stderr


def test_pictures_it_cannot_draw_are_refused_before_computing(tmp_path: Path) -> None:
    axes = [{"name": n, "type": "int", "size": 3, "start": 0, "step": 1} for n in "abc"]
    study = _study(tmp_path, "c", "cube", axes)
    for name in ("c.svg", "c.pdf", "c.png"):
        out = _run(tmp_path, study, name)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "(this one is 3-D)" in out.stderr and "Traceback" not in out.stderr
    md5 = ld2("run", str(EXAMPLES / "md5.json"), "-o", "md5.svg",
              env={"LD2_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)  # fmt: skip
    assert md5.returncode == 2 and "(this one is infinite)" in md5.stderr
    assert not (tmp_path / "started").exists()
    assert not {"c.svg", "c.pdf", "c.png", "md5.svg"} & {p.name for p in tmp_path.iterdir()}


def _without_matplotlib(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`ld2 ARGS` in a Python where `import matplotlib` fails."""
    code = (
        "import runpy, sys\n"
        "sys.modules['matplotlib'] = None\n"
        "sys.argv = ['ld2', *sys.argv[1:]]\n"
        "runpy.run_module('ld2', run_name='__main__', alter_sys=True)\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LD2_REDIS_URL", "LD2_API_URL")}  # fmt: skip
    return subprocess.run([sys.executable, "-c", code, *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, cwd=cwd)  # fmt: skip


def test_figures_without_matplotlib_name_the_extra_and_png_needs_nothing(tmp_path: Path) -> None:
    study = _study(tmp_path, "g", "grid")
    env = {"LD2_STATE_DIR": str(tmp_path / "state")}
    for fmt in ("svg", "pdf"):
        out = _without_matplotlib("run", str(study), "--import", "runners", "-o", f"g.{fmt}",
                                  cwd=tmp_path, env=env)  # fmt: skip
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"g.{fmt}: an .{fmt} figure needs matplotlib, which is not installed" in out.stderr
        assert "pip install 'ld2[plot]'" in out.stderr and "uv sync --extra plot" in out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "started").exists() and not (tmp_path / f"g.{fmt}").exists()
    result = _without_matplotlib("result", "g", "-o", "g.svg", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "ld2[plot]" in result.stderr  # before reading anything
    assert "Traceback" not in result.stderr
    png = _without_matplotlib("run", str(study), "--import", "runners", "-w", "1", "-o", "g.png",
                              cwd=tmp_path, env=env)  # fmt: skip
    assert png.returncode == 0, png.stderr
    pixels, _ = decode_png((tmp_path / "g.png").read_bytes())
    assert (pixels == rgb(10 * XS[:, None] + YS[None, :])).all()
