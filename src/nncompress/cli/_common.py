"""What every command shares: exit codes, limits, and the checks of arguments and paths
that run before any model or data is loaded (bad input: one line naming the value)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import stat
from pathlib import Path
from typing import Any, NoReturn

DEFAULT_RECIPE = "deep-compression-lenet300"
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
MAX_INPUT_ELEMENTS = 2**24  # --input-shape: 64 MiB of fp32 zeros at most
MAX_INPUT_DIMS = 4
DEFAULT_INPUT_SHAPE = (1, 28, 28)


def _bad(message: str) -> NoReturn:
    from nncompress.errors import ConfigError

    raise ConfigError(message)


def _path_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        _bad(f"{what} must be a path, got {value!r}")
    if "\0" in value:
        _bad(f"{what} {value!r} is not a valid path (NUL byte)")
    return value


def _input_file(value: str, what: str) -> Path:
    """An existing, readable regular file."""
    _path_text(value, what)
    path = Path(value)
    try:
        st = path.stat()
    except FileNotFoundError:
        _bad(f"{what} {value!r} does not exist; expected an existing file")
    except NotADirectoryError:
        _bad(f"{what} {value!r} does not exist (a folder in the path is a file); expected an existing file")
    except OSError as exc:
        _bad(f"{what} {value!r} cannot be read: {exc.strerror or exc}")
    if stat.S_ISDIR(st.st_mode):
        _bad(f"{what} {value!r} is a directory; expected a file")
    if not stat.S_ISREG(st.st_mode):
        _bad(f"{what} {value!r} is not a regular file; expected a file")
    if not os.access(path, os.R_OK):
        _bad(f"{what} {value!r} is not readable (permission denied)")
    return path


def _creatable_folder(folder: Path, what: str, value: str) -> None:
    """``folder`` exists as a writable directory, or can be created: its nearest existing
    ancestor is a writable directory (not a file)."""
    d = folder if str(folder) else Path(".")
    while True:
        try:
            if d.is_symlink() and not d.exists():
                _bad(f"{what} {value!r}: {str(d)!r} is a broken symbolic link")
            if d.exists():
                if not d.is_dir():
                    _bad(f"{what} {value!r}: {str(d)!r} is a file, not a folder; choose a path in a folder")
                if not os.access(d, os.W_OK | os.X_OK):
                    _bad(f"{what} {value!r}: folder {str(d)!r} is not writable")
                return
        except OSError as exc:
            _bad(f"{what} {value!r} is not a usable path: {exc.strerror or exc}")
        if d.parent == d:
            return
        d = d.parent


def _output_file(value: str, what: str, *, not_same_as: tuple[Path, ...] = ()) -> Path:
    """A file path to write: not a directory or special file, in a folder that exists or
    can be created, and not one of the inputs."""
    _path_text(value, what)
    path = Path(value)
    try:
        if path.is_dir():
            _bad(f"{what} {value!r} is a directory; expected a file path (e.g. {str(path / 'model.nnc')!r})")
        if path.exists() and not path.is_file():
            _bad(f"{what} {value!r} exists and is not a regular file; expected a file path")
    except OSError as exc:
        _bad(f"{what} {value!r} is not a usable path: {exc.strerror or exc}")
    if value.endswith(("/", os.sep)):
        _bad(f"{what} {value!r} ends with a path separator; expected a file path, not a folder")
    _creatable_folder(path.parent, what, value)
    for other in not_same_as:
        if path.exists() and other.exists() and os.path.samefile(path, other):
            _bad(f"{what} {value!r} is the input file itself; choose another path")
    return path


def _output_dir(value: str, what: str) -> Path:
    """A folder to write into: an existing directory, or a path that can be created."""
    _path_text(value, what)
    path = Path(value)
    try:
        if path.exists() and not path.is_dir():
            _bad(f"{what} {value!r} is a file; expected a folder (existing or to be created)")
    except OSError as exc:
        _bad(f"{what} {value!r} is not a usable path: {exc.strerror or exc}")
    _creatable_folder(path, what, value)
    return path


def _positive_int(value: int | None, what: str) -> None:
    if value is not None and value < 1:
        _bad(f"{what} must be a positive integer, got {value}")


def _fraction(value: float, what: str, *, low_open: bool, allowed: str) -> None:
    ok = (0.0 < value < 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok or math.isnan(value):
        _bad(f"{what} must be {allowed}, got {value:g}")


def _check_data(args: argparse.Namespace) -> None:
    """--data one of the built-in sets, --root an existing folder, and the set present."""
    from nncompress.data.datasets import DEBIAN_ROOTS, check_data_args, find_idx_root

    check_data_args(args.data, args.root, name_key="--data", root_key="--root")
    if args.data in DEBIAN_ROOTS:
        find_idx_root(args.data, args.root)  # DataNotFoundError says how to get it


def _check_format_options(args: argparse.Namespace) -> None:
    """--max-params and --verify-key of the commands that read a .nnc file."""
    _positive_int(args.max_params, "--max-params")
    args.key_bytes = None
    if args.verify_key is not None:
        key_path = _input_file(args.verify_key, "--verify-key file")
        args.key_bytes = _read_key(key_path)


def _read_key(path: Path) -> bytes:
    from nncompress.format.signing import read_key

    return read_key(path)  # ConfigError naming the file for a missing, empty or odd-sized key


def _read_nnc(fn: Any, args: argparse.Namespace, *fargs: Any) -> Any:
    """Read the .nnc file ``args.file`` with ``fn``; a file that breaks the reader in any
    other way than ``FormatError`` is still bad input, reported as such."""
    from nncompress.errors import FormatError, NNCompressError
    from nncompress.format import load as format_load

    if fn is format_load:  # a model built by the user's factory: --model names it (never the file)
        import functools

        from nncompress.factory import load as factory_load

        fn = functools.partial(factory_load, factory=getattr(args, "model", None))
    try:
        return fn(args.file, *fargs, max_params=args.max_params, verify_key=args.key_bytes)
    except FormatError as exc:
        if args.max_params is not None and "max_params" not in str(exc) and "max-params" not in str(exc):
            raise FormatError(f"{exc} (read with --max-params {args.max_params})") from exc
        raise
    except (NNCompressError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged or hostile file, whatever it broke
        logging.getLogger(__name__).debug("reading %s failed", args.file, exc_info=True)
        raise FormatError(f"{args.file}: not a readable .nnc file ({type(exc).__name__}: {exc})") from exc


def _check_model_fits(model: Any, x: Any, file: str, data: str) -> None:
    """Run one image through the model before the real work."""
    import torch

    try:
        model.eval()
        with torch.no_grad():
            model(x[:1])
    except Exception as exc:  # noqa: BLE001 - the file's model and the data do not match
        _bad(f"the model in {file!r} does not accept {data!r} images of shape {list(x.shape[1:])}: "
             f"{type(exc).__name__}: {exc}")


def _add_format_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-params", type=int, metavar="N",
                   help="refuse a file that would decode to more than N parameters")
    p.add_argument("--verify-key", metavar="KEYFILE",
                   help="refuse a file not signed with this key (see 'nncompress sign')")


def _add_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PKG.MOD:FN",
                   help="the factory that builds the file's user-defined model (nncompress never imports "
                        "code a file names)")


def _factory_data(spec: str, args: argparse.Namespace):
    """The data of the factory ``spec`` (``--data pkg.mod:fn``; ``.train``, ``.test``), called
    with the kwargs the file ``args.file`` recorded for that same factory."""
    from nncompress.format import read_info
    from nncompress.recipes.build import build_recipe_data
    from nncompress.recipes.schema import DataSpec

    meta = _read_nnc(read_info, args).metadata
    rec = meta.get("factory") if isinstance(meta.get("factory"), dict) else {}
    kwargs = rec.get("data_kwargs") if rec.get("data") == spec and isinstance(rec.get("data_kwargs"), dict) else {}
    return build_recipe_data(DataSpec(factory=spec, kwargs=kwargs))
