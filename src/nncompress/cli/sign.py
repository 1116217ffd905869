"""``nncompress sign``: sign a .nnc file with a secret key."""

from __future__ import annotations

import argparse
import os

from nncompress.cli._common import (
    _bad,
    _input_file,
    _output_file,
    _read_key,
)


def _cmd_sign(args: argparse.Namespace) -> int:
    source = _input_file(args.file, ".nnc file")
    key_path = _input_file(args.key, "--key file")
    out = _output_file(args.out, "--out") if args.out is not None else source
    if os.path.samefile(source, key_path):
        _bad(f"the .nnc file {args.file!r} and the --key file {args.key!r} are the same file")
    if out.exists() and os.path.samefile(out, key_path):
        _bad(f"--out {args.out!r} is the key file; choose another path")
    key = _read_key(key_path)
    from nncompress.format.signing import sign_file

    written = sign_file(source, key, out=None if args.out is None else out)
    print(f"signed {args.file} -> {written}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the 'sign' subcommand."""
    sg = sub.add_parser("sign", help="sign a .nnc file with a key (then check it with --verify-key)",
                        description="Sign a .nnc file with a secret key. Make a key with "
                                    "`head -c 32 /dev/urandom > key` and keep it private; "
                                    "info/eval/export/sensitivity --verify-key key then refuse "
                                    "files not signed with it.")
    sg.add_argument("file")
    sg.add_argument("--key", required=True, metavar="KEYFILE",
                    help="secret key file (make one with: head -c 32 /dev/urandom > key)")
    sg.add_argument("--out", help="write the signed copy here (default: sign FILE in place)")
    sg.set_defaults(fn=_cmd_sign)
