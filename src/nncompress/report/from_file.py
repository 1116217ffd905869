"""The report of a ``.nnc`` file after the fact (``nncompress report``): what the file
itself tells (per-layer table, byte split, the stored weights' distributions, sizes,
MACs, the accuracy the run recorded in its metadata), joined with the run's
``report.json`` when there is one (stages, curves, references, the distributions of every
stage, the dense accuracy)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from nncompress.analysis.accounting import layer_stats, totals
from nncompress.analysis.file_table import compression_table
from nncompress.errors import ConfigError
from nncompress.report.byte_split import byte_split
from nncompress.report.distributions import weight_distributions

log = logging.getLogger(__name__)
STATS_MAX_PARAMETERS = 50_000_000
"""Above this many parameters the MACs are not counted (building the model twice)."""


def _original(arch: dict[str, Any] | None, input_shape: list[int] | None) -> dict[str, int | None]:
    """fp32 bytes, parameters and MACs of the built-in model the architecture record names
    as built (before neurons were removed); Nones for a user-defined model."""
    from nncompress.models import build_model

    out: dict[str, int | None] = {"dense_fp32_bytes": None, "original_parameters": None, "original_macs": None}
    if not isinstance(arch, dict) or "name" not in arch:
        return out
    if arch.get("name") == "hashed":
        arch = (arch.get("kwargs") or {}).get("base") or {}
    try:
        with torch.device("meta"):
            model = build_model(str(arch["name"]), **dict(arch.get("kwargs", {})))
        out["dense_fp32_bytes"] = sum(4 * t.numel() for t in model.state_dict().values() if t.is_floating_point())
        n = sum(p.numel() for p in model.parameters())
        out["original_parameters"] = n
        if input_shape and n <= STATS_MAX_PARAMETERS:
            dense = build_model(str(arch["name"]), **dict(arch.get("kwargs", {})))
            out["original_macs"] = totals(layer_stats(dense, torch.zeros(1, *input_shape)))["macs"]
    except Exception as exc:  # noqa: BLE001 - an unknown or damaged record: no original figures
        log.info("no original model for %s: %s", arch, exc)
    return out


def _file_summary(path: Path, info, model: torch.nn.Module | None, input_shape: list[int] | None) -> dict[str, Any]:
    """The summary figures a file alone gives."""
    s: dict[str, Any] = {"dense_accuracy": None, "file_bytes": info.file_bytes}
    acc = info.metadata.get("accuracy")
    s["compressed_accuracy"] = float(acc) if isinstance(acc, (int, float)) and math.isfinite(acc) else None
    s.update(_original(info.arch, input_shape))
    if s["dense_fp32_bytes"] is None:  # a user model: the layers as stored are all we know
        s["dense_fp32_bytes"] = compression_table(info)["total"]["dense_fp32_bytes"]
    s["ratio"] = s["dense_fp32_bytes"] / max(info.file_bytes, 1)
    if model is not None and input_shape:
        t = totals(layer_stats(model, torch.zeros(1, *input_shape)))
        s.update(weights=t["weights"], nonzero_weights=t["nonzeros"], macs=t["macs"], sparse_macs=t["sparse_macs"])
    return s


def read_report_json(path: str | Path) -> dict[str, Any]:
    """A run's ``report.json``; ``ConfigError`` naming the file when it is not one."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"report JSON {str(p)!r} cannot be read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"report JSON {str(p)!r} is not JSON text ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict) or "file_bytes" not in data["summary"]:
        raise ConfigError(f"report JSON {str(p)!r} is not an nncompress run report (no summary.file_bytes)")
    return data


def report_from_file(path: str | Path, report_json: str | Path | None = None, *, verify_key: bytes | None = None,
                     max_params: int | None = None, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """A report dictionary for ``report_html`` from a ``.nnc`` file and, when given, its
    run's ``report.json`` (which must describe a file of the same size). ``model``: the
    skeleton of a user-defined model (else such a file gets no MACs).

    Example:
        >>> page = report_html(report_from_file("m.nnc", "report/report.json"))  # doctest: +SKIP
    """
    import nncompress
    from nncompress.format.model_io import load_state
    from nncompress.format.records import architectures, load_plugins

    path = Path(path)
    state, info = load_state(path, verify_key=verify_key, max_params=max_params)
    load_plugins()
    input_shape = info.metadata.get("input_shape") or architectures().input_shape(info.arch)
    loaded = None
    if info.arch or model is not None:
        loaded = nncompress.load(path, model=model, verify_key=verify_key, max_params=max_params)
    table = compression_table(info)
    stored = {k: v.detach().float().numpy().ravel() for k, v in state.items()
              if k.endswith("weight") and v.dim() > 1 and v.is_floating_point()}
    summary = _file_summary(path, info, loaded, input_shape)
    if summary.get("original_parameters") is not None:
        table["total"].update(original_fp32_bytes=summary["dense_fp32_bytes"], ratio_vs_original=summary["ratio"])
    base = {"recipe": info.metadata.get("recipe", path.name), "command": "", "file": str(path),
            "nncompress": info.version, "stages": [], "curves": [], "references": []}
    if report_json is not None:
        run = read_report_json(report_json)
        if run["summary"]["file_bytes"] != info.file_bytes:
            raise ConfigError(f"report JSON {str(report_json)!r} describes a file of {run['summary']['file_bytes']:,} "
                              f"bytes; {str(path)!r} has {info.file_bytes:,}: not this file's report")
        report = {**base, **run, "file": str(path)}
        report["summary"] = {**summary, **{k: v for k, v in run["summary"].items() if v is not None}}
    else:
        report = {**base, "summary": summary,
                  "source_note": "Rebuilt from the file alone: no stage records, training curves or dense accuracy "
                                 "(pass the run's report.json with --report-json for those); the accuracy is the "
                                 "one the run recorded in the file."}
    report["table"] = table
    report["byte_split"] = byte_split(info)
    if not report.get("distributions"):
        report["distributions"] = weight_distributions({}, stored)
    return report
