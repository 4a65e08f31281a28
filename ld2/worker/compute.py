"""Compute processes: each compute slot of a worker owns one forked process, fed one trial at a
time over a pipe.

Why not a `ProcessPoolExecutor`: a trial of 1,024 Mandelbrot points computes in about 1 ms, and
the executor's round trip (a manager thread, a feeder thread, the whole `StudySpec` pickled for
every call) cost half as much again. Here a trial is one small message out and its values back;
the process caches each study's spec, sent once. One process per slot also means a computation
that must be ended (over its limit, abandoned, the worker stopping) takes only its own slot's
process with it: the other slots' trials are never disturbed.

The processes are forked from the worker after its runner modules are imported (the CLI loads
them first), so they start with everything loaded. They take the default SIGTERM, ignore SIGINT
(Ctrl-C reaches the whole process group; the worker decides) and, on Linux, are killed by the
kernel when the worker dies (PR_SET_PDEATHSIG), even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

import anyio
import numpy as np

from ld2.core.study import StudySpec
from ld2.worker import runners

log = logging.getLogger("ld2.worker")
GRACE = 1.0
"""Seconds a compute process has to end after SIGTERM before it is sent SIGKILL."""
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SPECS_KEPT = 256
"""Study specs a compute process keeps; past that it forgets them all and is sent them again."""
_HEADER = struct.Struct("!Q")


class ComputeFailed(Exception):
    """The runner raised: a failure of the trial (the process is fine)."""


class ComputeDied(Exception):
    """The compute process died during the trial (a crash, os._exit, a signal)."""

    def __init__(self, message: str, exitcode: int | None) -> None:
        super().__init__(message)
        self.exitcode = exitcode

    @property
    def stopped(self) -> bool:
        """Ended by SIGTERM or SIGINT: a stop (the worker's process group signalled), not
        the runner's doing."""
        return self.exitcode in (-signal.SIGTERM, -signal.SIGINT)


def _write(fd: int, payload: bytes) -> None:
    """One message: its length, then its bytes (one write for a small one)."""
    header = _HEADER.pack(len(payload))
    parts = (header + payload,) if len(payload) < 65536 else (header, payload)
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _read_message(jobs: BinaryIO) -> bytes | None:
    """The next message from the worker; None once it closed the pipe. Read through a
    buffer: a message's header and body come in one read (a system call saved a trial)."""
    header = jobs.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size = _HEADER.unpack(header)[0]
    body = jobs.read(size)
    return body if len(body) == size else None


def _init_child(imports: Sequence[str], parent: int) -> None:
    """Runs first in each compute process (forked from the worker, with its signal handlers)."""
    signal.set_wakeup_fd(-1)  # the worker's event loop's, inherited
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # terminate() ends a computation
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the worker decides
    if sys.platform == "linux":
        # SIGKILL when the thread that forked this process ends: the worker's event loop thread
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # the worker died before the prctl: no signal will come
        os._exit(1)
    runners.load(imports)


def _serve(jobs: int, out: int, others: Sequence[int], imports: Sequence[str], parent: int) -> None:
    """A compute process's life: read a message, compute, answer; until the pipe closes."""
    for fd in others:  # the worker's ends of these pipes
        os.close(fd)
    _init_child(imports, parent)
    specs: dict[str, StudySpec] = {}
    reader = open(jobs, "rb", buffering=1 << 16)  # noqa: SIM115  # read until the process exits
    while True:
        body = _read_message(reader)
        if body is None:
            os._exit(0)  # the worker closed the pipe: it is ending
        message = pickle.loads(body)
        if message[0] == "spec":
            if len(specs) >= SPECS_KEPT:
                specs.clear()
            specs[message[1]] = message[2]
            continue
        _, name, sid, start, count = message
        try:
            reply: tuple[Any, ...] = (
                "ok",
                runners.compute(runners.REGISTRY[name], specs[sid], start, count),
            )
        except Exception as err:  # the runner's own error: a failure of the trial
            reply = ("error", f"{type(err).__name__}: {err}")
        _write(out, pickle.dumps(reply, protocol=5))


class ComputeProcess:
    """One slot's compute process: started on first use (and again after it was ended)."""

    def __init__(self, imports: Sequence[str]) -> None:
        self.imports = tuple(imports)
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._jobs = self._results = -1
        self._known: set[str] = set()  # studies whose spec the process has
        self._buffer = bytearray()  # bytes read from the process, not yet a whole message
        self._eof = False  # the process closed its end of the pipe
        self._arrived = asyncio.Event()  # bytes came (set by `_readable`)
        self.started = 0  # processes started, ever (tests count restarts)

    def start(self) -> None:
        """Fork the process (in the event loop's thread: its pipe is read by the loop)."""
        if self._proc is not None:
            return
        jobs_r, jobs_w = os.pipe()
        results_r, results_w = os.pipe()
        proc = multiprocessing.get_context("fork").Process(
            target=_serve,
            args=(jobs_r, results_w, (jobs_w, results_r), self.imports, os.getpid()),
            daemon=True,
            name="ld2-compute",
        )
        try:
            proc.start()
        finally:
            os.close(jobs_r)
            os.close(results_w)
        os.set_blocking(results_r, False)
        self._proc, self._jobs, self._results = proc, jobs_w, results_r
        self._known = set()
        self._buffer = bytearray()
        self._eof = False
        self._arrived = asyncio.Event()
        asyncio.get_running_loop().add_reader(results_r, self._readable)
        self.started += 1

    async def compute(self, name: str, sid: str, spec: StudySpec, start: int, count: int) -> Any:
        """The runner's values for points ``[start, start+count)``. Raises `ComputeFailed` (the
        runner raised) or `ComputeDied`; if cancelled, the process is ended (its computation
        with it) and the next call starts a fresh one."""
        self.start()
        try:
            if sid not in self._known:
                if len(self._known) >= SPECS_KEPT:
                    self._known.clear()  # (the process clears its own the same way)
                _write(self._jobs, pickle.dumps(("spec", sid, spec), protocol=5))
                self._known.add(sid)
            _write(self._jobs, pickle.dumps(("job", name, sid, start, count), protocol=5))
            reply = await self._receive()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.end(grace=0.0)
            raise
        if reply[0] == "error":
            raise ComputeFailed(reply[1])
        values: np.ndarray = reply[1]
        return values

    async def _receive(self) -> Any:
        """The next message from the process. The pipe is read by a callback of the event
        loop, registered once per process (a wait per trial would add two epoll_ctl calls
        and a future to every trial)."""
        while True:
            if len(self._buffer) >= _HEADER.size:
                size = _HEADER.unpack_from(self._buffer)[0]
                end = _HEADER.size + size
                if len(self._buffer) >= end:
                    message = pickle.loads(memoryview(self._buffer)[_HEADER.size : end])
                    del self._buffer[:end]
                    return message
            if self._eof:
                raise await self._death()
            self._arrived.clear()
            await self._arrived.wait()

    def _readable(self) -> None:
        """Event loop callback: read what the process sent."""
        while True:
            try:
                chunk = os.read(self._results, 1 << 20)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:  # it closed its end: it is exiting
                self._eof = True
                asyncio.get_running_loop().remove_reader(self._results)
                break
            self._buffer += chunk
            if len(chunk) < 1 << 20:
                break
        self._arrived.set()

    async def _death(self) -> ComputeDied:
        proc = self._proc
        code = None
        if proc is not None:
            await _exited(proc, GRACE)
            code = proc.exitcode
        if code is not None and code < 0:
            return ComputeDied(
                f"the compute process was killed by {signal.Signals(-code).name}", code
            )
        if code is not None:
            return ComputeDied(f"the compute process exited with status {code}", code)
        return ComputeDied("the compute process died", code)

    async def end(self, grace: float = GRACE) -> None:
        """End the process: SIGTERM, then SIGKILL after `grace` seconds (at once with 0)."""
        proc, self._proc = self._proc, None
        if self._results >= 0 and not self._eof:
            asyncio.get_running_loop().remove_reader(self._results)
        for fd in (self._jobs, self._results):
            if fd >= 0:
                os.close(fd)
        self._jobs = self._results = -1
        if proc is None:
            return
        if grace > 0:
            proc.terminate()
            await _exited(proc, grace)
        if proc.exitcode is None:
            proc.kill()
            await _exited(proc, GRACE)
        if proc.exitcode is not None:
            proc.close()


async def _exited(proc: multiprocessing.process.BaseProcess, seconds: float) -> None:
    """Wait up to `seconds` for `proc` to exit, and reap it if it did."""
    with anyio.move_on_after(seconds):
        while proc.exitcode is None:
            await anyio.wait_readable(proc.sentinel)
            proc.join(0)
