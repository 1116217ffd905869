"""An English text corpus built at run time from Debian's package descriptions.

``apt-cache dumpavail`` lists every available package with its ``Description:`` (a short
line and, where the package lists carry it, a long description of continuation lines).
Each package gives one passage (short + long text, cleaned, length-bounded); passages are
deduplicated on a normalised form (lower case, letters and digits only, parenthesised
remarks such as "(data files)" dropped; the short line alone and the long text alone are
keys too, so the ``-dev`` / ``-doc`` variants of one package count once), shuffled with a seed and split into disjoint
``calib.txt``, ``train.txt`` and ``eval.txt`` (one passage per line). The descriptions are
Debian's (free licences); nothing is downloaded.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nncompress.checks import check_int
from nncompress.errors import DataNotFoundError

log = logging.getLogger(__name__)

MIN_CHARS = 24
"""Shortest passage kept (shorter descriptions are names, not sentences)."""
MAX_CHARS = 600
"""Longest passage kept (cut at the last sentence end, else word, before it)."""
MIN_WORDS = 4
"""Fewest words in a passage."""


@dataclass(frozen=True)
class CorpusReport:
    """What ``debian_corpus`` wrote."""

    out_dir: str
    counts: dict[str, int]
    """Split -> passages written."""
    available: int
    """Distinct passages found."""


def parse_descriptions(text: str) -> list[tuple[str, str]]:
    """(short, long) description of every package stanza in ``apt-cache dumpavail``
    output (``long`` is empty when the lists carry only the short line).

    Example:
        >>> parse_descriptions("Package: a\\nDescription: An editor\\n Edits text files.\\n .\\n Fast.\\n")
        [('An editor', 'Edits text files.\\n\\nFast.')]
    """
    out = []
    for stanza in text.split("\n\n"):
        short, long_lines, inside = None, [], False
        for line in stanza.split("\n"):
            if line.startswith("Description:"):
                short, inside = line[len("Description:"):].strip(), True
            elif inside and line.startswith(" "):
                body = line[1:]
                long_lines.append("" if body.strip() == "." else body)
            else:
                inside = False
        if short:
            out.append((short, "\n".join(long_lines).strip()))
    return out


_BULLET = re.compile(r"^\s*([*+\-o#]|\d+[.)])\s+")


def clean_passage(short: str, long: str = "") -> str | None:
    """One passage from a description: the short line as a sentence, then the long text's
    prose lines joined (bullet markers removed), whitespace collapsed, cut to
    ``MAX_CHARS``; None when it is too short or not mostly plain English text.

    Example:
        >>> clean_passage("fast text editor", "It edits\\nfiles quickly.")
        'Fast text editor. It edits files quickly.'
    """
    head = short.strip().rstrip(".")
    if not head:
        return None
    head = head[0].upper() + head[1:] + "."
    body = " ".join(_BULLET.sub("", ln).strip() for ln in long.splitlines() if ln.strip())
    text = " ".join(f"{head} {body}".split())
    if len(text) > MAX_CHARS:
        cut = text[:MAX_CHARS]
        end = cut.rfind(". ")
        text = cut[: end + 1] if end >= MIN_CHARS else cut[: cut.rfind(" ")].rstrip(",;:") + "."
    letters = sum(c.isascii() and c.isalpha() for c in text)
    if len(text) < MIN_CHARS or len(text.split()) < MIN_WORDS or letters < 0.6 * len(text):
        return None
    if "http" in text and len(text) < 80:
        return None
    return text


def normalise(text: str) -> str:
    """The form passages are deduplicated on.

    Example:
        >>> normalise("Real-time strategy game (data files).")
        'real time strategy game'
    """
    text = re.sub(r"\([^)]*\)", " ", text.lower())
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def distinct_passages(descriptions: Iterable[tuple[str, str]]) -> list[str]:
    """Cleaned passages, first occurrence kept, no two sharing a normalised form, a
    normalised short description or a normalised long description."""
    seen: set[str] = set()
    out = []
    for short, long in descriptions:
        text = clean_passage(short, long)
        if text is None:
            continue
        keys = {normalise(text), "short:" + normalise(short)}
        if long.strip():
            keys.add("long:" + normalise(long))
        if keys & seen:
            continue
        seen.update(keys)
        out.append(text)
    return out


def split_passages(passages: list[str], sizes: dict[str, int], seed: int = 0) -> dict[str, list[str]]:
    """Shuffle ``passages`` with ``seed`` and cut consecutive, disjoint splits of the
    given sizes (in the order of ``sizes``).

    Example:
        >>> split_passages(["a", "b", "c"], {"calib": 1, "eval": 2}, seed=0)
        {'calib': ['a'], 'eval': ['c', 'b']}
    """
    need = sum(sizes.values())
    if need > len(passages):
        raise DataNotFoundError(f"{len(passages):,} distinct passages found, {need:,} asked "
                                f"({', '.join(f'{k} {v:,}' for k, v in sizes.items())}); ask for fewer")
    order = list(passages)
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = order[start:start + n]
        start += n
    return out


def dumpavail_text() -> str:
    """The output of ``apt-cache dumpavail`` (DataNotFoundError when apt is missing)."""
    exe = shutil.which("apt-cache")
    if exe is None:
        raise DataNotFoundError("apt-cache is not installed; the text corpus is built from Debian's package "
                                "descriptions (run on Debian/Ubuntu, or pass your own text files)")
    try:
        run = subprocess.run([exe, "dumpavail"], capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataNotFoundError(f"apt-cache dumpavail failed: {exc}") from None
    if run.returncode != 0:
        raise DataNotFoundError(f"apt-cache dumpavail failed (exit {run.returncode}): "
                                f"{run.stderr.decode(errors='replace')[:200]} (run apt-get update?)")
    return run.stdout.decode("utf-8", errors="replace")


def debian_splits(sizes: dict[str, int], seed: int = 0, text: str | None = None) -> tuple[dict[str, list[str]], int]:
    """(split name -> passages, distinct passages found): disjoint splits of the given
    sizes, in order, of the package descriptions of ``apt-cache dumpavail`` (or ``text``,
    that output), shuffled with ``seed``. The same sizes and seed give the same splits, and
    a split of a run is a prefix-aligned cut of the same shuffled list.

    Example:
        >>> debian_splits({"calib": 256, "test": 1000})[0]["test"][:1]  # doctest: +SKIP
        ['Tool to ...']
    """
    passages = distinct_passages(parse_descriptions(dumpavail_text() if text is None else text))
    return split_passages(passages, sizes, seed), len(passages)


def debian_corpus(out_dir: str | Path, calib: int = 512, train: int = 8192, eval: int = 1024,
                  seed: int = 0, text: str | None = None) -> CorpusReport:
    """Write disjoint ``calib.txt``, ``train.txt`` and ``eval.txt`` into ``out_dir`` from
    the package descriptions of ``apt-cache dumpavail`` (or ``text``, that output).

    Raises:
        ConfigError: a count is not a positive integer.
        DataNotFoundError: apt-cache is missing or gives fewer distinct passages than asked.

    Example:
        >>> debian_corpus("corpus", calib=256, train=4096, eval=1000).counts  # doctest: +SKIP
        {'calib': 256, 'train': 4096, 'eval': 1000}
    """
    sizes = {"calib": check_int(calib, "calib", 1), "train": check_int(train, "train", 1),
             "eval": check_int(eval, "eval", 1)}
    check_int(seed, "seed", 0)
    splits, available = debian_splits(sizes, seed, text)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in splits.items():
        (out / f"{name}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    log.info("corpus: %d distinct passages, wrote %s to %s", available, sizes, out)
    return CorpusReport(str(out), {k: len(v) for k, v in splits.items()}, available)
