"""``python -m ld2`` is the ``ld2`` command; `main` is also the ``ld2`` console script.

Nothing heavy is imported here: ``ld2 --version`` is answered before typer and the commands
are; every other command line goes to the typer app in `ld2.cli`, which imports what a
command needs when it runs.
"""

import sys


def main() -> None:
    """The ``ld2`` command line (the exit status is the process's)."""
    if sys.argv[1:] == ["--version"]:  # what the app's eager --version prints, without typer
        from ld2 import __version__

        sys.stdout.write(f"ld2 {__version__}\n")
        return
    from ld2.cli import app

    try:
        app()
    finally:
        _leave_the_heap()


def _leave_the_heap() -> None:
    """Let the interpreter's finalization skip collecting the heap: at exit CPython runs the
    cyclic garbage collector over every object still alive (numpy, pydantic, redis, rich,
    typer: ~0.1 s after an `ld2 run`), all of it freed with the process anyway. Frozen, the
    objects are left out of that collection; nothing else of the exit changes (atexit
    handlers, flushes and finalizers still run)."""
    import gc

    gc.freeze()


if __name__ == "__main__":
    main()
