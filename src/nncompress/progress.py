"""Progress of a recipe run: what a person watching it sees, and the training curves the
report draws.

``RunProgress`` is the one object through which a run reports progress. It writes to a
stream it is given (the CLI gives ``sys.stderr``); without one it draws nothing and only
records. Always, drawing or not, it records every ``fit``'s per-epoch metrics in
``curves`` (the report's training and retraining curves):
``[{"label": "round 2/5 retrain", "stage": "prune", "epochs": [{"epoch": 0,
"train_loss": 0.41, "train_accuracy": 0.86, "val_accuracy": 0.85}, ...]}, ...]``
(``train_accuracy`` when the batches carry class labels, ``val_accuracy`` when the fit
evaluated).

What it draws:

- a heading per stage: ``[2/5] prune: 5 rounds, retrain 4 epochs each, final retrain 40
  epochs x4``;
- per ``fit``, on a terminal: a progress bar labelled with the stage and the fit
  (``prune | round 2/5 retrain``) whose postfix shows the epoch and the running loss and
  accuracy, left on screen when done; elsewhere (a log file, a pipe): plain lines, at
  most one per epoch and about ``epoch_lines`` per fit (every k-th epoch and the last);
- a one-line result per stage: accuracy (or the run's score), nonzero weights, seconds.

A fit learns its label from the reporter passed as ``fit(..., progress=...)``:
``run_progress.fits("train")`` or ``run_progress.fits(lambda i: f"round {i + 1}/5
retrain")`` (the label of the i-th fit of that reporter), so code that calls ``fit``
several times (``iterative_prune``, ``soup_fit``) labels each call without knowing about
progress. This module imports no other part of nncompress.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

log = logging.getLogger(__name__)
Label = str | Callable[[int], str]


def _num(value: float) -> str:
    """``40`` for 40.0, ``0.5`` for 0.5."""
    return f"{value:g}"


def _epochs(cfg: Any) -> str | None:
    """``40 epochs`` of a training config (anything with ``epochs``), else None."""
    epochs = getattr(cfg, "epochs", None)
    if not isinstance(epochs, int | float) or isinstance(epochs, bool):
        return None
    return f"{_num(epochs)} epoch{'' if epochs == 1 else 's'}"


def describe_stage(name: str, cfg: Any) -> str:
    """A short description of a stage's config for its heading (duck-typed: a training
    config's epochs, batch size and learning rate; a schedule's rounds; the final
    retraining and its soup; a method; a fine-tuning).

    Example:
        >>> from types import SimpleNamespace as S
        >>> describe_stage("prune", S(schedule=[0.5, 0.8], retrain=S(epochs=4), final_retrain=S(epochs=40),
        ...                                final_soup=4))
        'prune: 2 rounds, retrain 4 epochs each, final retrain 40 epochs x4'
    """
    parts: list[str] = []
    method = getattr(cfg, "method", None)
    if isinstance(method, str):
        inner = getattr(cfg, "quantizer", cfg)  # the quantize stage: the method's own config
        bits, include = getattr(inner, "bits", None), getattr(inner, "include", None)
        if isinstance(bits, int) and not isinstance(bits, bool):
            method += f" {bits} bits"
        if isinstance(include, Sequence) and not isinstance(include, str) and include:
            method += " on " + ", ".join(map(str, include[:2])) + (", ..." if len(include) > 2 else "")
        parts.append(method)
    schedule = getattr(cfg, "schedule", None)
    if isinstance(schedule, Sequence) and not isinstance(schedule, str):
        retrain = _epochs(getattr(cfg, "retrain", None))
        parts.append(f"{len(schedule)} round{'' if len(schedule) == 1 else 's'}"
                     + (f", retrain {retrain} each" if retrain else ""))
    elif getattr(cfg, "sparsity", None) is not None or getattr(cfg, "quality", None) is not None:
        retrain = _epochs(getattr(cfg, "retrain", None))
        parts.append("one-shot" + (f", retrain {retrain}" if retrain else ""))
    final = _epochs(getattr(cfg, "final_retrain", None))
    if final:
        soup = getattr(cfg, "final_soup", 1)
        parts.append(f"final retrain {final}" + (f" x{soup}" if isinstance(soup, int) and soup > 1 else ""))
    finetune = _epochs(getattr(cfg, "finetune", None))
    if finetune:
        parts.append(f"fine-tune {finetune}")
    own = _epochs(cfg)
    if own and not parts:
        batch, lr = getattr(cfg, "batch_size", None), getattr(cfg, "lr", None)
        parts.append(own + (f", batch {batch}" if isinstance(batch, int) else "")
                     + (f", lr {_num(lr)}" if isinstance(lr, int | float) else ""))
    return f"{name}: {', '.join(parts)}" if parts else name


def _duration(seconds: float) -> str:
    """``4.2s``, ``2m31s``, ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _size_known(stream: Any) -> bool:
    """Whether the terminal behind ``stream`` tells its size (a pseudo-terminal may say 0 x 0)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


class FitProgress:
    """The progress of one ``fit`` call (made by ``FitReporter.fit_begin``): ``step`` per
    optimizer step, ``epoch_end`` per epoch, ``close`` at the end."""

    def __init__(self, run: RunProgress, label: str, total_steps: int, steps_per_epoch: int, n_epochs: int,
                 start_step: int, done: Sequence[Mapping[str, float]]) -> None:
        self.run, self.label = run, label
        self.n_epochs, self.steps_per_epoch = n_epochs, max(1, steps_per_epoch)
        self.curve: dict[str, Any] = {"label": label, "stage": run.stage or "", "epochs": []}
        run.curves.append(self.curve)
        for metrics in done:  # resumed from a checkpoint: the epochs run before
            self.curve["epochs"].append(curve_point(metrics))
        self.every = max(1, math.ceil(n_epochs / run.epoch_lines))
        self.t0 = time.perf_counter()
        self._reset()
        self.epoch = start_step // self.steps_per_epoch
        self.bar = None
        if run.drawing and run.terminal:
            from tqdm import tqdm

            known = _size_known(run.stream)  # a terminal of unknown size (0 x 0) draws nothing: 100 x 24
            self.bar = tqdm(total=total_steps, initial=start_step, desc=self.title, leave=True,
                            file=run.stream, dynamic_ncols=known, ncols=None if known else 100,
                            nrows=None if known else 24)

    @property
    def title(self) -> str:
        """``prune | round 2/5 retrain`` (the stage, then the fit's label)."""
        stage = self.run.stage
        return f"{stage} | {self.label}" if stage and not self.label.startswith(stage) else self.label

    def _reset(self) -> None:
        self.loss_sum, self.seen, self.correct, self.counted = 0.0, 0, 0, 0

    def postfix(self) -> str:
        """``epoch 3/40 loss 0.4123 acc 86.12%``: the epoch and its running mean loss and
        training accuracy so far."""
        text = f"epoch {self.epoch + 1}/{self.n_epochs}"
        if self.seen:
            text += f" loss {self.loss_sum / self.seen:.4f}"
        if self.counted:
            text += f" acc {_pct(self.correct / self.counted)}"
        return text

    def step(self, loss: float, n: int, correct: int | None = None) -> None:
        """One optimizer step on ``n`` samples with mean ``loss`` (``correct``: samples whose
        arg-max matched their class label, None without labels)."""
        self.loss_sum += loss * n
        self.seen += n
        if correct is not None:
            self.correct += correct
            self.counted += n
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(1)

    def epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Record the epoch's metrics (``fit``'s: ``train_loss``, ``train_accuracy``,
        ``val_accuracy``); off a terminal, write a line every k-th epoch and the last."""
        self.curve["epochs"].append(curve_point(metrics))
        if self.run.drawing and not self.run.terminal and ((epoch + 1) % self.every == 0
                                                           or epoch + 1 == self.n_epochs):
            text = f"epoch {epoch + 1}/{self.n_epochs}  loss {metrics.get('train_loss', float('nan')):.4f}"
            if "train_accuracy" in metrics:
                text += f"  train acc {_pct(metrics['train_accuracy'])}"
            if "val_accuracy" in metrics:
                text += f"  val acc {_pct(metrics['val_accuracy'])}"
            self.run.write(f"    {self.title}: {text}  ({_duration(time.perf_counter() - self.t0)})")
        self.epoch = epoch + 1
        self._reset()

    def close(self) -> None:
        """End of the fit: the bar stays on a terminal."""
        if self.bar is not None:
            self.epoch = min(self.epoch, self.n_epochs - 1)
            self.bar.close()
            self.bar = None


def curve_point(metrics: Mapping[str, float]) -> dict[str, float]:
    """One epoch of a curve, in the report's contract: ``epoch`` (int), ``train_loss``,
    and ``train_accuracy`` / ``val_accuracy`` when the fit measured them.

    Example:
        >>> curve_point({"epoch": 2.0, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.9})
        {'epoch': 2, 'train_loss': 0.5, 'val_accuracy': 0.9}
    """
    point: dict[str, float] = {"epoch": int(metrics.get("epoch", 0))}
    for key in ("train_loss", "train_accuracy", "val_accuracy"):
        if key in metrics:
            point[key] = float(metrics[key])
    return point


class FitReporter:
    """What ``fit(..., progress=reporter)`` accepts: ``fit_begin`` gives the progress of
    one fit, labelled by ``label`` (a string, or ``label(i)`` for the reporter's i-th fit;
    a string repeated gets `` (2)``, `` (3)``... from its second fit on)."""

    def __init__(self, run: RunProgress, label: Label) -> None:
        self.run, self.label, self.count = run, label, 0

    def next_label(self) -> str:
        """The label of the next fit (counts it)."""
        i, self.count = self.count, self.count + 1
        if callable(self.label):
            return str(self.label(i))
        return self.label if i == 0 else f"{self.label} ({i + 1})"

    def fit_begin(self, total_steps: int, steps_per_epoch: int, n_epochs: int, start_step: int = 0,
                  done: Sequence[Mapping[str, float]] = ()) -> FitProgress:
        """Called by ``fit`` before its first step (``done``: epochs restored from a checkpoint)."""
        return FitProgress(self.run, self.next_label(), total_steps, steps_per_epoch, n_epochs, start_step, done)


class RunProgress:
    """Progress of a recipe run, written to ``stream`` (None: record only, draw nothing).

    ``terminal``: draw progress bars (default: ``stream.isatty()``); otherwise plain lines.
    ``stages``: the recipe's stage names, for the ``[i/n]`` of the headings.
    ``epoch_lines``: off a terminal, about this many epoch lines per fit at most.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> p = RunProgress(out, stages=["train", "encode"])
        >>> p.stage_begin("train", None)
        >>> out.getvalue()
        '[1/2] train\\n'
        >>> RunProgress().curves  # recording only
        []
    """

    def __init__(self, stream: TextIO | None = None, *, terminal: bool | None = None,
                 stages: Sequence[str] | None = None, epoch_lines: int = 10) -> None:
        self.stream = stream
        self.terminal = bool(terminal if terminal is not None else
                             stream is not None and getattr(stream, "isatty", lambda: False)())
        self.stages = list(stages) if stages is not None else None
        self.epoch_lines = max(1, int(epoch_lines))
        self.curves: list[dict[str, Any]] = []
        self.stage: str | None = None
        self.index = 0  # stages begun (or skipped by a resumed run)
        self._reported = 0  # records of the run whose result line was written
        self._t0 = 0.0

    @property
    def drawing(self) -> bool:
        """Whether anything is written (a stream was given)."""
        return self.stream is not None

    def write(self, line: str) -> None:
        """One line to the stream (nothing without one)."""
        if self.stream is None:
            return
        self.stream.write(line + "\n")
        self.stream.flush()

    def fits(self, label: Label) -> FitReporter:
        """A reporter to pass as ``fit(..., progress=...)``: its fits are labelled ``label``
        (or ``label(i)`` for the i-th)."""
        return FitReporter(self, label)

    def fit_begin(self, total_steps: int, steps_per_epoch: int, n_epochs: int, start_step: int = 0,
                  done: Sequence[Mapping[str, float]] = ()) -> FitProgress:
        """``fit(..., progress=run_progress)`` itself: the fit is labelled by the current
        stage's name (``fit`` outside a stage)."""
        return self.fits(self.stage or "fit").fit_begin(total_steps, steps_per_epoch, n_epochs, start_step, done)

    def stage_begin(self, name: str, cfg: Any, ctx: Any = None) -> None:
        """A stage starts: the previous stage's result line if not written yet (``ctx``: the
        run's context, whose last record it reads), then the heading."""
        if ctx is not None:
            self.stage_done(ctx)
        if self.stages is not None:  # a resumed run skips stages: find this one from the last position
            later = [i for i in range(self.index, len(self.stages)) if self.stages[i] == name]
            self.index = later[0] + 1 if later else self.index + 1
            where = f"[{self.index}/{len(self.stages)}]"
        else:
            self.index += 1
            where = f"[{self.index}]"
        self.stage = name
        self._t0 = time.perf_counter()
        if ctx is not None:
            self._reported = len(getattr(ctx, "records", ()))
        self.write(f"{where} {describe_stage(name, cfg)}")

    def stage_done(self, ctx: Any) -> None:
        """The result line of the current stage once ``ctx`` holds its record (and it was not
        written yet): accuracy (the run's score), nonzero weights of the model, seconds. Usable as ``run_recipe``'s
        ``stage_hook`` (see ``stage_hook``)."""
        records = list(getattr(ctx, "records", ()))
        if len(records) > self._reported and self.stage is not None and records[-1].stage == self.stage:
            self.write(self.result_line(records[-1], ctx))
        self._reported = len(records)

    def stage_hook(self, name: str, ctx: Any) -> None:
        """``run_recipe(..., stage_hook=progress.stage_hook)``: the stage's result line as soon
        as the runner recorded its score."""
        self.stage_done(ctx)

    def result_line(self, record: Any, ctx: Any = None) -> str:
        """``    prune done in 4m12s: accuracy 89.49%, nonzero weights 21,765/266,200 (8.18%)``."""
        parts = []
        acc = getattr(record, "accuracy", None)
        if acc is not None:
            scored = ctx is not None and (getattr(ctx, "metric_fn", None) is not None
                                          or getattr(ctx, "score_fn", None) is not None)
            parts.append(f"score {acc:.4f}" if scored else f"accuracy {_pct(acc)}")
        model = getattr(ctx, "model", None) if ctx is not None else None
        if model is not None:
            total, nonzero = weight_counts(model)
            if total:
                parts.append(f"nonzero weights {nonzero:,}/{total:,} ({_pct(nonzero / total)})")
        stored = (getattr(record, "extra", None) or {}).get("bytes")
        if isinstance(stored, int) and stored > 0:
            parts.append(f"{stored:,} bytes as stored")
        head = f"    {record.stage} done in {_duration(record.seconds)}"
        return head + (": " + ", ".join(parts) if parts else "")


def weight_counts(model: Any) -> tuple[int, int]:
    """(weights, nonzero weights) of the matrices and kernels (parameters with >= 2
    dimensions named ``*weight``) of a torch module.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = m.weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
        >>> weight_counts(m)
        (4, 2)
    """
    total = nonzero = 0
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() > 1:
            total += p.numel()
            nonzero += int((p != 0).sum())
    return total, nonzero
