#!/usr/bin/env python3
"""The image's HEALTHCHECK: ``GET /ping`` of the container's ``ld2 api``, if it runs one.

One image runs three roles (API, worker, reaper) and only the API serves HTTP. A plain
``/ping`` check would mark every worker and reaper container unhealthy (and a Swarm would
restart them forever), so this finds the ``ld2 api`` process of the container first:

* none: this container is a worker or a reaper, whose health is its process (it exits on a
  fatal error and the platform restarts it): healthy;
* one: ``http://127.0.0.1:PORT/ping`` must answer 200 within 4 s, where PORT is the
  process's ``--port``, else its ``$PORT``, else 8000 (``ld2 api``'s own order, except a
  ``-c`` config file's port, which is not read here: pass the port as an argument then).

``ld2-healthcheck PORT`` checks that port whatever runs. Standard library only, so the check
needs nothing installed but the image's Python. Exit status: 0 healthy, 1 not.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence

DEFAULT_PORT = 8000
TIMEOUT = 4.0


def api_argv(argv: Sequence[str]) -> list[str] | None:
    """The arguments after ``api`` if `argv` runs ``ld2 api`` (the console script or
    ``python -m ld2``), else None."""
    for k, arg in enumerate(argv[:-1]):
        if os.path.basename(arg) == "ld2" and argv[k + 1] == "api":
            return list(argv[k + 2 :])
    return None


def port_of(args: Sequence[str], environ: Mapping[str, str]) -> int:
    """``--port N`` / ``--port=N`` in `args`, else ``$PORT`` in `environ`, else 8000."""
    for k, arg in enumerate(args):
        if arg == "--port" and k + 1 < len(args):
            return int(args[k + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    if environ.get("PORT"):
        return int(environ["PORT"])
    return DEFAULT_PORT


def _processes() -> Iterable[tuple[list[str], dict[str, str]]]:
    """(argv, environment) of each process this user may read (the environment may be empty)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:  # gone since listed
            continue
        environ: dict[str, str] = {}
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                for item in f.read().split(b"\0"):
                    key, _, value = item.decode(errors="replace").partition("=")
                    if key:
                        environ[key] = value
        except OSError:  # another user's
            pass
        yield argv, environ


def find_api_port() -> int | None:
    """The port of this container's ``ld2 api``, or None if it runs none."""
    for argv, environ in _processes():
        args = api_argv(argv)
        if args is not None:
            return port_of(args, environ)
    return None


def ping(port: int, timeout: float = TIMEOUT) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/ping"
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: Sequence[str]) -> int:
    port = int(argv[0]) if argv else find_api_port()
    if port is None:
        return 0  # a worker or reaper container: nothing serves HTTP here
    if ping(port):
        return 0
    print(f"ld2-healthcheck: no answer from http://127.0.0.1:{port}/ping", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
