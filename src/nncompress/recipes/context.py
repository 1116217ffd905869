"""State handed from one recipe stage to the next."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from nncompress.format.codecs import CodecChoice
from nncompress.progress import RunProgress
from nncompress.prune.mask import Masks


@dataclass
class StageRecord:
    """What one stage did: its name, wall time, test accuracy after it, and extras."""

    stage: str
    seconds: float
    accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """The model being compressed and everything stages share."""

    model: nn.Module
    train_data: Dataset | Any  # a Dataset, a DataLoader or a list of batches
    test_data: Dataset | Any
    example_input: Any  # one sample with its batch dimension: (1, C, H, W), or a dict of (1, T)
    seed: int = 0
    masks: Masks | None = None
    codecs: dict[str, CodecChoice] = field(default_factory=dict)
    records: list[StageRecord] = field(default_factory=list)
    snapshots: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    keep_teacher: bool = False  # a later stage distils: the first train stage keeps a copy
    teacher: nn.Module | None = None  # frozen copy of the trained dense model (distillation)
    loss_fn: Callable[..., torch.Tensor] | None = None  # recipe 'loss:' (logits, target, inputs); None = CE
    metric_fn: Callable[..., Any] | None = None  # recipe 'metric:' (logits, target); None = accuracy
    calib_data: Any = None  # data factory's / text 'calib' split, when given
    score_fn: Callable[[nn.Module], float] | None = None  # replaces the test metric (an embedder's cosine)

    @property
    def progress(self) -> RunProgress:
        """The run's progress reporter (``nncompress.progress.RunProgress``): stage headings,
        labelled bars and result lines when the caller gave one that draws, and always the
        recorded training curves (``ctx.progress.curves``, for the report). Kept in
        ``extras["progress"]``, where ``run_recipe(progress=...)`` puts what it is given:
        a ``RunProgress``, ``True`` (one drawing on stderr) or ``False`` (recording only).

        Example:
            >>> ctx.progress.curves[0]["label"]  # doctest: +SKIP
            'train'
        """
        given = self.extras.get("progress")
        if not isinstance(given, RunProgress):
            import sys

            given = RunProgress(sys.stderr if given else None)
            self.extras["progress"] = given
        return given

    @progress.setter
    def progress(self, value: RunProgress) -> None:
        self.extras["progress"] = value

    def score(self, model: nn.Module | None = None) -> float:
        """The run's score of ``model`` (default: the run's model) on the test data: accuracy,
        the recipe's ``metric``, or ``score_fn`` (a Hugging Face model on text without a
        metric: the mean cosine of its sentence embeddings to the model as given)."""
        from nncompress.train.loop import evaluate

        if self.score_fn is not None:
            return self.score_fn(model if model is not None else self.model)
        return evaluate(model if model is not None else self.model, self.test_data, loss_fn=self.loss_fn,
                        metric_fn=self.metric_fn)["accuracy"]

    def forget_replaced_layers(self) -> None:
        """After a stage replaced layers (decompose, hashed): drop the masks and codec
        choices of tensors the model no longer has (or whose shape changed)."""
        state = self.model.state_dict()
        if self.masks is not None:
            kept = {k: m for k, m in self.masks.items() if k in state and state[k].shape == m.shape}
            self.masks = Masks(kept) if kept else None
        self.codecs = {k: v for k, v in self.codecs.items() if k in state}

    def snapshot(self, label: str) -> None:
        """Keep a copy of every Linear/Conv weight for the histograms of the report."""
        self.snapshots[label] = {
            n: p.detach().cpu().numpy().ravel().copy()
            for n, p in self.model.named_parameters()
            if n.endswith("weight") and p.dim() > 1
        }
