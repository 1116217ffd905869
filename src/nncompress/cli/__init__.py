"""The ``nncompress`` command: run recipes, inspect, evaluate and export compressed files.

The CLI owns the terminal (progress bars, tables); the library only logs. Every command
checks its arguments and paths before it loads a model or data; bad input ends with one
line ``nncompress: error: ...`` naming the value and what is allowed, and exit status 2
(a traceback only with ``-v``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from nncompress.cli._common import (  # noqa: F401 - re-exported for callers of nncompress.cli
    DEFAULT_RECIPE,
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
)

#: Modules of nncompress.cli, each with ``register(sub)`` adding its subcommands (help order).
COMMAND_MODULES = ("run", "info", "export", "sign", "report")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nncompress`` command: global options, then each command
    module's subcommands (``COMMAND_MODULES``, in help order)."""
    p = argparse.ArgumentParser(prog="nncompress", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging (-vv for debug) and a traceback on errors")
    from nncompress._version import __version__

    p.add_argument("--version", action="version", version=f"nncompress {__version__}")
    sub = p.add_subparsers(dest="command")
    for name in COMMAND_MODULES:
        importlib.import_module(f"nncompress.cli.{name}").register(sub)
    return p


def _error_line(exc: BaseException) -> str:
    """One line for an error caused by the input."""
    if isinstance(exc, OSError) and exc.filename is not None:
        names = repr(str(exc.filename)) + (f" -> {str(exc.filename2)!r}" if exc.filename2 is not None else "")
        return f"{names}: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, MemoryError):
        return f"not enough memory for this input ({exc or 'MemoryError'})"
    if isinstance(exc, RecursionError):
        return f"input nested too deeply ({exc})"
    text = str(exc).strip()
    from nncompress.errors import NNCompressError

    if not isinstance(exc, NNCompressError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return " ".join(text.split("\n")) if len(text) < 2000 else text[:2000] + "..."


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: 0 on success, 2 for bad input (one line on
    stderr naming the value), 1 for an internal error, 130 when interrupted. ``-v`` adds
    the traceback."""
    import traceback

    from nncompress.errors import NNCompressError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:  # bare `nncompress`: help, not a job
        parser.print_help()
        return 0
    bad_input: tuple[type[BaseException], ...] = (NNCompressError, OSError, ValueError, MemoryError,
                                                  RecursionError, OverflowError)
    try:
        import yaml

        bad_input += (yaml.YAMLError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print("nncompress: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except bad_input as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"nncompress: error: {_error_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback with -v
        if args.verbose:
            traceback.print_exc()
            print(f"nncompress: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            print(f"nncompress: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)",
                  file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
