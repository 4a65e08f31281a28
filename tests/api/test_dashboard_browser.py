"""The dashboard in a real browser: headless Debian chromium driven by Playwright, against real
processes (a private redis-server, ``ld2 api`` with a token, a worker on a slow 2-D study).

Everything is asserted from the page itself: the token states, the study appearing, the heat
map's canvas pixels changing while the sweep runs and, once it is done, the pixels of sampled
grid points against `ld2.colormap.rgb` of the results (with the min/max the page shows), pause
holding the done count still, resume finishing it, the failure listed, delete with its confirm.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ld2 import colormap
from tests.conftest import _free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = (
    "the dashboard's browser test is skipped: no chromium binary on PATH "
    "(apt-get install chromium; .ci/run installs it when apt is available)"
)

TOKEN = "br0wser-t0ken"
ROWS, COLS = 32, 32  # y (the first axis: rows) × x
Y0, DY, X0, DX = -1.0, 1 / 16, -2.0, 1 / 8
BAD = (3, 7)  # (row, column) of the point whose runner raises

RUNNER = """
import math
import time

from ld2.worker.runners import runner


@runner("dashfield")
def dashfield(y: float, x: float) -> float:
    time.sleep({pause})
    if (y, x) == ({bad_y!r}, {bad_x!r}):
        raise ValueError(f"no value at y={{y}}, x={{x}}")
    return math.sin(2.5 * x) * math.cos(3.0 * y) + 0.3 * x
"""


def _study(path: Path) -> Path:
    path.write_text(json.dumps({
        "name": "dash", "required_capacity": ["dashfield"],
        "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
        "result_type": "scalar", "result_value_type": "float",
        "parameter_space": {"type": "aligned", "axes": [
            {"name": "y", "type": "float", "size": ROWS, "step": DY, "start": Y0},
            {"name": "x", "type": "float", "size": COLS, "step": DX, "start": X0}]},
    }))  # fmt: skip
    return path


def _env(extra: dict[str, str]) -> dict[str, str]:
    drop = ("REDIS_URL", "LD2_REDIS_URL", "LD2_API_URL", "LD2_API_TOKEN", "LD2_PREFIX")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


@contextlib.contextmanager
def _process(args: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ld2", *args], env=_env(env),
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ping", timeout=0.5).status_code == 200:
                return
        assert proc.poll() is None, f"ld2 api exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "ld2 api did not answer /ping within 60 s"
        time.sleep(0.05)  # polling for readiness, not a fixed wait for a state


@pytest.fixture
def redis_url(private_redis_url: str | None, embedded_url: str) -> str:
    return private_redis_url or embedded_url


PAINTED = """([r, g, b]) => {
    const c = document.getElementById("heatmap");
    if (!c || !c.width || c.closest("[hidden]")) return -1;
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] !== r || d[i + 1] !== g || d[i + 2] !== b) n++;
    return n;
}"""

NEXT_POLL = """() => new Promise((resolve) => {
    const late = setTimeout(resolve, 5000);
    document.addEventListener("ld2:polled", () => { clearTimeout(late); resolve(); }, { once: true });
})"""


def _until(page: Any, predicate: str, arg: Any, what: str, limit: float = 30) -> Any:
    """Wait until `predicate(arg)`, evaluated in the page, is truthy: checked after each of the
    page's polls. (Playwright's wait_for_function evaluates strings, which the page's CSP
    forbids; a function passed to evaluate is not affected.)"""
    deadline = time.monotonic() + limit
    while not (got := page.evaluate(predicate, arg)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.evaluate(NEXT_POLL)
    return got


RULE = """async ([lut, values, lo, hi, log]) => {
    const plots = await import(new URL("dashboard/static/plots.js", document.baseURI).href);
    const cmap = new plots.Colormap(lut);
    const scale = cmap.scale(lo, hi, log);
    return values.map((v) => cmap.indexOn(v, scale));
}"""


def _same_rule_as_python(page: Any) -> None:
    """The page's colour rule (plots.js) gives `ld2.colormap.rgb`'s colours, linear and log."""
    lut = {"lut": [list(c) for c in colormap.LUT], "missing": list(colormap.MISSING)}
    table = [*lut["lut"], lut["missing"]]
    rng = np.random.default_rng(7)
    lo, hi = -3.0, 5.0
    edges = [lo + k * (hi - lo) / 256 for k in range(257)]
    linear = [*rng.uniform(-4, 6, 500), *edges, lo, hi, np.inf, -np.inf, np.nan, -0.0]
    positive = [*rng.lognormal(0, 3, 500), 1e-3, 1e3, 0.0, -1.0, np.inf, np.nan]
    for values, lo_, hi_, log in ((linear, lo, hi, False), (linear, 2.0, 2.0, False),
                                  (positive, 1e-3, 1e3, True)):  # fmt: skip
        got = page.evaluate(RULE, [lut, [float(v) for v in values], lo_, hi_, log])
        want = colormap.rgb(np.array(values), lo_, hi_, log=log).tolist()
        wrong = [(v, table[k], w) for v, k, w in zip(values, got, want, strict=True)
                 if table[k] != w]  # fmt: skip
        assert wrong == [], wrong[:5]


PIXEL = """([x, y]) => Array.from(
    document.getElementById("heatmap").getContext("2d").getImageData(x, y, 1, 1).data)"""


def test_dashboard_in_chromium(tmp_path: Path, redis_url: str) -> None:
    if CHROMIUM is None:
        warnings.warn(NO_CHROMIUM, stacklevel=1)  # shown in the run's summary, not only with -rs
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    bad_y, bad_x = Y0 + BAD[0] * DY, X0 + BAD[1] * DX
    (tmp_path / "dashmod.py").write_text(RUNNER.format(pause=0.008, bad_y=bad_y, bad_x=bad_x))
    study = _study(tmp_path / "dash.json")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"authorization": f"Bearer {TOKEN}"}
    api_args = ["api", "--port", str(port), "--redis", redis_url, "--token", TOKEN,
                "--prefix", f"dash{uuid.uuid4().hex[:10]}"]  # fmt: skip
    worker_args = ["worker", "--import", "dashmod", "--capacity", "dashfield", "--processes", "1",
                   "--max-size", "16", "--idle-wait", "0.2", "--exit-when-idle", "20",
                   "--api", url, "--name", "browser-worker"]  # fmt: skip
    worker_env = {"PYTHONPATH": str(tmp_path), "LD2_API_TOKEN": TOKEN}
    missing = list(colormap.MISSING)

    with (
        _process(api_args, tmp_path / "api.log", {}) as api,
        sync_playwright() as p,
    ):
        _wait_up(url, api, tmp_path / "api.log")
        submitted = subprocess.run(
            [sys.executable, "-m", "ld2", "submit", str(study), "--api", url],
            env=_env({"LD2_API_TOKEN": TOKEN}), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        sid = httpx.get(f"{url}/study/info", params={"name": "dash"}, headers=auth).json()[
            "summary"
        ]["study_id"]

        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # -- the token: asked for, a wrong one refused, the right one kept ------------------
            page.goto(f"{url}/")
            page.wait_for_selector("#token-view:not([hidden])")
            _same_rule_as_python(page)
            assert "requires a token" in page.inner_text("#token-message")
            page.fill("#token-input", "not-the-token")
            page.click("#token-submit")
            page.wait_for_selector("body[data-token='refused'] #token-view:not([hidden])")
            assert "refused" in page.inner_text("#token-message")
            page.fill("#token-input", TOKEN)
            page.click("#token-submit")

            # -- the overview: the study appears; the worker once it registers ----------------
            row = f"#studies tr[data-study-id='{sid}']"
            page.wait_for_selector(row)
            assert page.inner_text(f"{row} td:first-child") == "dash"
            assert page.inner_text(f"{row} .badge") == "wait"
            with _process(worker_args, tmp_path / "worker.log", worker_env) as worker:
                page.wait_for_selector("#workers tr[data-worker-id]")
                assert "browser-worker" in page.inner_text("#workers tbody")
                page.wait_for_selector(f"{row} .badge[data-status='running']")

                # -- the study's page: the map fills in while the sweep runs ------------------
                page.click(f"{row} a")
                page.wait_for_selector("#heat:not([hidden])")
                above = f"([rgb, n]) => ({PAINTED})(rgb) > n"
                _until(page, above, [missing, 0], "the first pixels")
                first = page.evaluate(PAINTED, missing)
                assert 0 < first < ROWS * COLS
                _until(page, above, [missing, first], "more pixels")

                # -- pause holds the count still over several polls; resume finishes ---------
                page.click("#btn-pause")
                page.wait_for_selector("#study-status[data-status='paused']")
                page.wait_for_selector("#st-flight[data-reserved='0']")  # in-flight trials landed
                polls = int(page.get_attribute("body", "data-polls") or 0)
                done = int(page.get_attribute("#st-done", "data-done") or -1)
                painted = page.evaluate(PAINTED, missing)
                _until(
                    page, "(n) => Number(document.body.dataset.polls) >= n", polls + 3, "3 polls"
                )
                assert int(page.get_attribute("#st-done", "data-done") or -1) == done
                assert page.evaluate(PAINTED, missing) == painted
                assert done < ROWS * COLS - 1, "the sweep ended before it could be paused"
                assert worker.poll() is None
                page.click("#btn-resume")
                page.wait_for_selector("#study-status[data-status='done']", timeout=90_000)
                page.wait_for_selector(f"#plot-card[data-landed='{ROWS * COLS - 1}']")
                assert page.inner_text("#st-failed") == "1"

            # -- once done: sampled pixels are the colour map's colours of the results -------
            lines = httpx.get(f"{url}/study/results", params={"study_id": sid, "format": "jsonl"},
                              headers=auth).text.splitlines()  # fmt: skip
            grid = np.full(ROWS * COLS, np.nan)
            for line in lines:
                rec = json.loads(line)
                grid[rec["flat"]] = rec["result"]
            lo = float(page.get_attribute("#cb-lo", "data-value") or "nan")
            hi = float(page.get_attribute("#cb-hi", "data-value") or "nan")
            assert (lo, hi) == (np.nanmin(grid), np.nanmax(grid))  # the page's min/max
            assert page.inner_text("#cb-lo").startswith("min ")
            for r, c in [(0, 0), (0, COLS - 1), (ROWS - 1, 0), (ROWS - 1, COLS - 1), (10, 21),
                         (27, 5), BAD]:  # fmt: skip
                want = colormap.rgb(np.array([grid[r * COLS + c]]), lo, hi)[0].tolist()
                got = page.evaluate(PIXEL, [c, r])
                assert got == [*want, 255], (r, c, got, want)
            assert page.evaluate(PIXEL, [BAD[1], BAD[0]])[:3] == missing

            # hover: the point under the mouse in the study's coordinates (row 0 at the top)
            page.locator("#heatmap").scroll_into_view_if_needed()
            box = page.locator("#heatmap").bounding_box()
            assert box is not None
            for r, c in [(0, 0), (ROWS - 1, 2)]:
                page.mouse.move(box["x"] + (c + 0.5) * box["width"] / COLS,
                                box["y"] + (r + 0.5) * box["height"] / ROWS)  # fmt: skip
                page.wait_for_selector("#hover:not([hidden])")
                text = page.inner_text("#hover")
                assert f"y = {Y0 + r * DY!r}" in text and f"x = {X0 + c * DX!r}" in text, text
                assert f"value: {float(grid[r * COLS + c])!r}" in text, text
            assert "top row is y = -1.0" in page.inner_text("#plot-note")

            # the failed point with its parameter values and error
            failures = page.inner_text("#failures tbody")
            assert f"y = {bad_y!r}, x = {bad_x!r}" in failures and "ValueError" in failures

            page.mouse.move(0, 0)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            # -- delete asks first, then the study is gone from the list ----------------------
            dialogs: list[str] = []

            def accept(dialog: Any) -> None:
                dialogs.append(dialog.message)
                dialog.accept()

            page.once("dialog", accept)
            page.click("#btn-delete")
            page.wait_for_selector("#overview-view:not([hidden]) #no-studies:not([hidden])")
            assert dialogs and "cannot be undone" in dialogs[0]
            status = httpx.get(f"{url}/study/info", params={"study_id": sid}, headers=auth)
            assert status.status_code == 404
            assert errors == [], errors
        finally:
            browser.close()
    print(f"test_dashboard_in_chromium: {time.monotonic() - started:.1f} s")
