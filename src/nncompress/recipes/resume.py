"""Stage checkpoints of a recipe run, for ``nncompress run RECIPE --resume``.

After every finished stage the runner writes ``stage-<i>.pt`` (``torch.save`` of tensors and
JSON strings only, read back with ``weights_only=True``): the model's state, the masks, the
codec choices, the stage records, the teacher and the histogram snapshots; a ``train``
stage also keeps an epoch checkpoint (``stage-<i>-fit.pt``, ``fit``'s own). ``--resume``
rebuilds the model and data from the recipe, loads the last stage checkpoint and runs the
remaining stages, so the file equals that of an uninterrupted run. A stage that changed
the model's structure (removed channels or blocks, low-rank layers) cannot be resumed past:
the state no longer fits the freshly built model and the error says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from nncompress.errors import ConfigError
from nncompress.prune.mask import Masks
from nncompress.recipes.context import RunContext, StageRecord
from nncompress.recipes.schema import Recipe
from nncompress.train.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)


def recipe_fingerprint(recipe: Recipe) -> str:
    """A hash of the recipe's content: checkpoints of another recipe are never resumed."""
    text = json.dumps(asdict(recipe), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageCheckpoints:
    """The checkpoint folder of one run.

    Example:
        >>> ckpt = StageCheckpoints("runs/x/model.nnc.resume", recipe)  # doctest: +SKIP
        >>> start, dense_accuracy = ckpt.restore(ctx)  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path, recipe: Recipe, *, write: bool = True):
        self.folder = Path(folder)
        self.fingerprint = recipe_fingerprint(recipe)
        self.n_stages = len(recipe.stages)
        self.write = write

    def fit_path(self, i: int) -> Path | None:
        """The epoch checkpoint of stage ``i``'s training (``fit(checkpoint=...)``)."""
        return self.folder / f"stage-{i}-fit.pt"

    def save(self, i: int, ctx: RunContext, dense_accuracy: float | None) -> None:
        """After stage ``i`` finished (rank 0 only)."""
        if not self.write:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"fingerprint": self.fingerprint, "stage": i, "dense_accuracy": dense_accuracy,
                "records": [asdict(r) for r in ctx.records],
                "codecs": {k: list(v) if isinstance(v, tuple) else v for k, v in ctx.codecs.items()},
                "dense_stats": ctx.extras.get("dense_stats")}
        state = {
            "meta": json.dumps(meta, default=repr),
            "model": {k: v.detach().cpu() for k, v in ctx.model.state_dict().items()},
            "masks": {k: v.cpu() for k, v in ctx.masks.items()} if ctx.masks is not None else {},
            "teacher": ({k: v.detach().cpu() for k, v in ctx.teacher.state_dict().items()}
                        if ctx.teacher is not None else {}),
            "snapshots": {label: {n: torch.from_numpy(a) for n, a in snap.items()}
                          for label, snap in ctx.snapshots.items()},
            "rng": torch.get_rng_state(),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.folder / f"stage-{i}.pt", buf.getvalue())
        fit = self.fit_path(i)
        if fit is not None and fit.exists():
            fit.unlink()  # the stage is done: its epoch checkpoint is no longer needed

    def restore(self, ctx: RunContext) -> tuple[int, float | None]:
        """Load the last stage checkpoint into ``ctx``: ``(stages done, dense accuracy)``;
        ``(0, None)`` when there is none."""
        done = sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("stage-*.pt")
                      if p.stem.count("-") == 1 and p.stem.split("-")[1].isdigit()) if self.folder.is_dir() else []
        if not done:
            log.info("no stage checkpoint in %s: starting from the first stage", self.folder)
            return 0, None
        i = done[-1]
        path = self.folder / f"stage-{i}.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(state["meta"])
        except Exception as exc:  # noqa: BLE001 - damaged checkpoint
            raise ConfigError(f"{path}: not a readable stage checkpoint ({type(exc).__name__}: {exc}); "
                              "delete the folder and run again without --resume") from exc
        if meta.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{self.folder} holds checkpoints of another recipe (or an edited one); delete it "
                              "or run without --resume")
        try:
            ctx.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ConfigError(f"cannot resume after stage {i}: it changed the model's structure, which a fresh "
                              f"model cannot take ({str(exc)[:200]}); run again without --resume") from exc
        device = next(ctx.model.parameters()).device
        ctx.masks = Masks({k: v.to(device) for k, v in state["masks"].items()}) if state["masks"] else None
        if state["teacher"]:
            from nncompress.distill.kd import frozen_teacher

            teacher = frozen_teacher(ctx.model)
            teacher.load_state_dict(state["teacher"])
            ctx.teacher = teacher
        ctx.codecs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["codecs"].items()}
        ctx.records = [StageRecord(**r) for r in meta["records"]]
        ctx.snapshots = {label: {n: t.numpy() for n, t in snap.items()} for label, snap in state["snapshots"].items()}
        if meta.get("dense_stats") is not None:
            ctx.extras["dense_stats"] = meta["dense_stats"]
        torch.set_rng_state(state["rng"])
        return i + 1, meta.get("dense_accuracy")

    def clear(self) -> None:
        """Remove the folder after a finished run (rank 0)."""
        if self.write and self.folder.is_dir():
            shutil.rmtree(self.folder, ignore_errors=True)
