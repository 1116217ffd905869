"""Plain text data for language models: one passage per line, tokenized into dict batches.

A batch is a dict of ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
tokenizer gives them), padded to the longest passage of the batch; models are called as
``model(**batch)``. ``TextDataset`` items are dicts of 1-D tensors and the dataset carries a
``collate_fn`` that pads, so ``DataLoader(ds, batch_size, collate_fn=ds.collate_fn)`` works.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from nncompress.checks import check_int
from nncompress.errors import ConfigError

MAX_LINE_CHARS = 100_000
"""Longest line ``read_lines`` accepts (a passage, not a whole book)."""


def read_lines(path: str | Path, limit: int | None = None) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file (at most ``limit``).

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, empty, or has a line
            longer than ``MAX_LINE_CHARS``.

    Example:
        >>> import tempfile; from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "eval.txt"
        >>> _ = path.write_text("First passage.\\n\\n  Second passage.\\nThird.\\n", encoding="utf-8")
        >>> read_lines(path, limit=2)
        ['First passage.', 'Second passage.']
    """
    if limit is not None:
        check_int(limit, "limit", 1)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"text file {str(path)!r} does not exist or is not a file; expected a UTF-8 "
                          "file with one passage per line")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"text file {str(path)!r} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"text file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    lines = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if len(line) > MAX_LINE_CHARS:
            raise ConfigError(f"text file {str(path)!r} line {i} has {len(line):,} characters; at most "
                              f"{MAX_LINE_CHARS:,} allowed (one passage per line)")
        lines.append(line)
        if limit is not None and len(lines) >= limit:
            break
    if not lines:
        raise ConfigError(f"text file {str(path)!r} holds no non-empty line; expected one passage per line")
    return lines


def pad_batch(items: Sequence[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack 1-D token tensors into a batch, padding each to the longest item:
    ``input_ids`` with ``pad_id``, every other key (attention mask, token types) with 0.

    Example:
        >>> b = pad_batch([{"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.ones(3, dtype=torch.long)},
        ...                {"input_ids": torch.tensor([5]), "attention_mask": torch.ones(1, dtype=torch.long)}])
        >>> b["input_ids"].tolist(), b["attention_mask"].tolist()
        ([[5, 6, 7], [5, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    if not items:
        raise ConfigError("pad_batch needs at least one item")
    longest = max(int(it["input_ids"].shape[0]) for it in items)
    out = {}
    for key in items[0]:
        fill = pad_id if key == "input_ids" else 0
        rows = torch.full((len(items), longest), fill, dtype=items[0][key].dtype)  # (N, T)
        for i, it in enumerate(items):
            rows[i, : it[key].shape[0]] = it[key]
        out[key] = rows
    return out


class TextDataset(Dataset):
    """Passages tokenized once (truncated to ``max_length`` tokens); items are dicts of
    1-D tensors; ``collate_fn`` pads a list of items to the longest.

    Example:
        >>> ds = TextDataset(["a cat", "a much longer dog"], tokenizer)  # doctest: +SKIP
        >>> loader = DataLoader(ds, 8, collate_fn=ds.collate_fn)  # doctest: +SKIP
    """

    def __init__(self, sentences: Sequence[str], tokenizer: Any, max_length: int = 128) -> None:
        check_int(max_length, "max_length", 2)
        if isinstance(sentences, str) or not sentences or not all(isinstance(s, str) for s in sentences):
            raise ConfigError("TextDataset needs a non-empty list of strings (one passage each)")
        enc = tokenizer(list(sentences), truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        self.items = [{k: torch.tensor(enc[k][i], dtype=torch.long) for k in keys}
                      for i in range(len(sentences))]
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]

    def collate_fn(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad ``items`` to the longest one (see :func:`pad_batch`)."""
        return pad_batch(items, self.pad_id)


def text_batches(tokenizer: Any, sentences: Sequence[str], batch_size: int = 32,
                 max_length: int = 128) -> list[dict[str, torch.Tensor]]:
    """Sentences as padded dict batches of ``batch_size`` passages, in order.

    Example:
        >>> batches = text_batches(tokenizer, read_lines("calib.txt"), 16)  # doctest: +SKIP
        >>> model(**batches[0])  # doctest: +SKIP
    """
    check_int(batch_size, "batch_size", 1)
    ds = TextDataset(sentences, tokenizer, max_length)
    return [ds.collate_fn(ds.items[i:i + batch_size]) for i in range(0, len(ds), batch_size)]
