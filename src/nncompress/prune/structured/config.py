"""``StructuredPruneConfig``: everything ``structured_prune`` removes and how, validated once.

The recipe's ``structured`` stage is this config plus the stage's own keys (the scoring
sample size, distillation), so an option added here is a recipe key too, documented by its
field docstring (``nncompress recipes --describe``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nncompress.checks import check_choice, check_float, check_fraction, check_int
from nncompress.errors import ConfigError
from nncompress.prune.structured.blocks import check_fit
from nncompress.prune.structured.scoring import CRITERIA
from nncompress.prune.structured.selection import TARGET_KINDS
from nncompress.train.loop import TrainConfig

MODES = ("global", "layer")
ENERGY_AWARE = "energy-aware"  # S5: its own layer order and least-squares refit, not a CRITERIA entry


@dataclass
class StructuredPruneConfig:
    """What ``structured_prune`` removes (scoring, selection, schedule, depth) and how.

    Example:
        >>> StructuredPruneConfig("taylor", target=0.5, steps=2).target_kind
        'macs'
    """

    criterion: str = "l1"
    """Channel scoring: a name of ``CRITERIA`` (l1, l2, apoz, entropy, taylor, icc,
    correlation, oracle, aofp, random) or ``energy-aware`` (S5)."""
    target: float = 0.5
    """Fraction of ``target_kind`` to remove, in [0, 1) (0.5 = 2x fewer MACs)."""
    target_kind: str = "macs"
    """What the target counts: macs, params, channels or latency (the layers' time measured
    on this machine, ``latency.LatencyModel``)."""
    mode: str = "global"
    """``global``: rank all channels together (per-layer normalised scores); ``layer``: remove
    the same share of every group (the uniform ratio that meets the target)."""
    ratios: dict[str, float] | None = None
    """Group name -> fraction removed, each in [0, 1): exactly these per-layer ratios
    (``target`` is then not used)."""
    min_channels: int = 1
    """Channels every pruned group keeps at least."""
    max_ratio: float = 0.9
    """Global ranking removes at most this share of any one group."""
    round_to: int | str = 1
    """Keep a multiple of this many channels in every pruned group, or ``latency``: only the
    counts where the group's layers, timed at batch ``latency_batch``, get faster."""
    latency_batch: int = 64
    """Batch size of the latency measurements (``round_to: latency``, ``target_kind:
    latency``)."""
    skip: list[str] = field(default_factory=list)
    """Glob patterns of modules whose channel groups stay whole."""
    steps: int = 1
    """Reach the target in this many steps (kept share ``(1 - target) ** (i / steps)``),
    re-scoring and fine-tuning between them."""
    finetune: TrainConfig | None = None
    """Training after each step's removal (``TrainConfig``; needs training data)."""
    fade_epochs: float = 0.0
    """> 0: each step's fine-tuning runs before the removal while the chosen channels fade
    linearly to zero over its first ``fade_epochs`` epochs (at most the finetune epochs)."""
    blocks: int | list[str] = 0
    """Depth pruning first: this many residual blocks (those whose removal raises the loss on
    the held-out sample least) or the named blocks, replaced by their shortcut; the target
    still counts against the model as given."""
    block_fit: str = "affine"
    """How a removed block's shortcut affine is fitted: ``affine`` (least-squares scale and
    shift of the block output) or ``mean`` (shift = mean branch output)."""
    keep_coupled: bool = False
    """Leave whole every group written by several layers (residual adds)."""

    def __post_init__(self) -> None:
        if self.criterion != ENERGY_AWARE and self.criterion not in CRITERIA:
            raise ConfigError(f"unknown criterion {self.criterion!r}; allowed: "
                              f"{', '.join([*CRITERIA, ENERGY_AWARE])}")
        self.target = check_fraction(self.target, "target", zero=True, one=False)
        check_choice(self.target_kind, TARGET_KINDS, "target_kind")
        check_choice(self.mode, MODES, "mode")
        if self.ratios is not None:
            if not isinstance(self.ratios, Mapping):
                raise ConfigError(f"ratios must map group names to fractions in [0, 1), got {self.ratios!r}")
            for k, v in self.ratios.items():
                check_fraction(v, f"ratio of {k!r}", zero=True, one=False)
        check_int(self.min_channels, "min_channels", 1)
        check_fraction(self.max_ratio, "max_ratio")
        if self.round_to != "latency":
            if isinstance(self.round_to, str):
                raise ConfigError(f"round_to must be an integer >= 1 or 'latency', got {self.round_to!r}")
            check_int(self.round_to, "round_to", 1)
        check_int(self.latency_batch, "latency_batch", 1)
        check_int(self.steps, "steps", 1)
        self._check_blocks()
        check_fit(self.block_fit, "block_fit")
        if self.fade_epochs:
            if self.finetune is None:
                raise ConfigError(f"fade_epochs={self.fade_epochs!r} out of range: the channels fade during the "
                                  "fine-tuning, so it needs finetune (and train_data)")
            e = self.finetune.epochs
            if not 0 < self.fade_epochs <= e:
                raise ConfigError(f"fade_epochs must be in (0, {e}], got {self.fade_epochs!r} (allowed: (0, {e}], "
                                  "at most the fine-tuning epochs)")
        check_float(self.fade_epochs, "fade_epochs", 0)

    def _check_blocks(self) -> None:
        if isinstance(self.blocks, str):  # one name
            self.blocks = [self.blocks]
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, (int, list, tuple)):
            raise ConfigError(f"blocks={self.blocks!r} not allowed; use a count >= 0 or a list of block names")
        if isinstance(self.blocks, int) and self.blocks < 0:
            raise ConfigError(f"blocks={self.blocks} out of range; allowed: >= 0 (a count) or a list of block names")
        if not self.blocks and not self.keep_coupled:
            return
        if self.criterion == ENERGY_AWARE:
            raise ConfigError("criterion 'energy-aware' has its own layer order; blocks and keep_coupled are not "
                              "supported with it")
        if self.blocks and (self.round_to == "latency" or self.target_kind == "latency"):
            raise ConfigError("blocks (depth pruning) works with MAC, parameter and channel targets, "
                              "not with latency targets or round_to='latency'")
