"""Recipe stages of the training-time sparsity methods (issue 4), structured pruning
(issue 3) and the low-bit quantizers (via the ``quantize`` stage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nncompress.errors import ConfigError
from nncompress.prune.mask import Masks
from nncompress.prune.structured.blocks import check_fit
from nncompress.prune.targets import prunable_weights
from nncompress.recipes.context import RunContext
from nncompress.recipes.stages import register_stage
from nncompress.recipes.teacher import StageDistillConfig, distill_loss, distill_summary
from nncompress.train.loop import TrainConfig


@dataclass
class SparseTrainConfig:
    """``method``: gradual (P4), dns (P5), obd/obs (S10), ssl (S11), gsm (S12), csgd (S13)
    or magnitude; ``params`` are the method's own (see ``nncompress.prune.sparse_train``);
    ``train``: the training budget (one-shot obd/obs/magnitude may omit it)."""

    method: str = "gradual"
    params: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig | None = None


@register_stage("sparse_train", SparseTrainConfig, "training-time / second-order sparsity (P4, P5, S10-S13)")
def run_sparse_train(ctx: RunContext, cfg: SparseTrainConfig) -> dict[str, Any]:
    from nncompress.prune.sparse_train import sparse_train

    res = sparse_train(ctx.model, cfg.method, ctx.train_data, cfg.train, **cfg.params)
    ctx.model = res.model
    ctx.masks = Masks.from_zeros(ctx.model, list(prunable_weights(ctx.model)))
    ctx.snapshot(f"after_{cfg.method}")
    return {"method": cfg.method, "sparsity": ctx.masks.sparsity(),
            "total_sparsity": ctx.masks.total_sparsity(),
            "info": {k: v for k, v in res.info.items() if isinstance(v, (int, float, str, list, dict))}}


@dataclass
class StructuredConfig:
    """Structured (filter/channel) pruning with physical removal (S1-S9, S14, S5).

    ``criterion``: a name of ``nncompress.prune.structured.CRITERIA`` or ``energy-aware``;
    ``target``: fraction of ``target_kind`` (macs, params or channels) to remove;
    ``mode``: global ranking or the same ratio per layer (``ratios`` to set them);
    ``samples``: size of the labelled training sample the data-driven criteria score on;
    ``finetune``: training after each of ``steps`` steps; ``round_to``: keep a multiple of
    that many channels in every pruned group, or ``latency``: only the counts where the
    group's layers, timed on this machine at batch ``latency_batch``, get faster
    (``target_kind: latency`` sets the target as a share of that measured time).
    ``distill``: the fine-tuning also learns from the run's teacher (the trained dense model)
    (K1; ``attention`` is not allowed, channels change under its hooks); ``fade_epochs``:
    each step's fine-tuning runs before the removal while the chosen channels fade to zero
    over its first ``fade_epochs`` epochs (``structured_prune(fade_epochs=...)``).
    ``blocks``: depth pruning first, that many residual blocks (those whose removal raises
    the loss on the sample least) or a list of block names, replaced by their shortcut;
    the target counts them; ``block_fit``: ``affine`` (least-squares scale and shift of the
    block output, the default) or ``mean`` (shift = mean branch output). ``keep_coupled``: residual-add groups
    keep all their channels.
    """

    criterion: str = "l1"
    target: float = 0.5
    target_kind: str = "macs"
    mode: str = "global"
    ratios: dict[str, float] | None = None
    min_channels: int = 1
    max_ratio: float = 0.9
    round_to: int | str = 1
    latency_batch: int = 64
    skip: list[str] = field(default_factory=list)
    steps: int = 1
    samples: int = 512
    finetune: TrainConfig | None = None
    distill: StageDistillConfig | None = None
    fade_epochs: float = 0.0
    blocks: int | list[str] = 0
    block_fit: str = "affine"
    keep_coupled: bool = False

    def __post_init__(self) -> None:
        check_fit(self.block_fit, "structured: block_fit")
        if self.distill is not None and self.finetune is None:
            raise ConfigError("structured: 'distill' acts during training; add a 'finetune' block")
        if self.distill is not None and self.distill.attention is not None:
            raise ConfigError("structured: distill.attention is not allowed (the pruned layers change shape "
                              "under its hooks); use alpha/temperature (K1)")
        if self.fade_epochs and (self.finetune is None or not 0 < self.fade_epochs <= self.finetune.epochs):
            limit = self.finetune.epochs if self.finetune is not None else "the finetune epochs"
            raise ConfigError(f"structured: fade_epochs={self.fade_epochs!r} out of range; allowed: (0, {limit}] "
                              "with a 'finetune' block")


@register_stage("structured", StructuredConfig, "filter/channel pruning with physical removal")
def run_structured(ctx: RunContext, cfg: StructuredConfig) -> dict[str, Any]:
    import torch

    from nncompress.prune.structured import structured_prune

    g = torch.Generator().manual_seed(ctx.seed)
    idx = torch.randperm(len(ctx.train_data), generator=g)[: cfg.samples].tolist()
    xs, ys = zip(*(ctx.train_data[i] for i in idx))
    res = structured_prune(ctx.model, cfg.criterion, cfg.target, cfg.target_kind,
                           (torch.stack(xs), torch.tensor(ys)), example_inputs=ctx.example_input,
                           mode=cfg.mode, ratios=cfg.ratios, min_channels=cfg.min_channels,
                           max_ratio=cfg.max_ratio, round_to=cfg.round_to,
                           latency_batch=cfg.latency_batch, skip=cfg.skip, steps=cfg.steps,
                           finetune=cfg.finetune, train_data=ctx.train_data,
                           loss_fn=distill_loss(ctx, cfg.distill, cfg.finetune), fade_epochs=cfg.fade_epochs,
                           blocks=cfg.blocks, keep_coupled=cfg.keep_coupled, block_fit=cfg.block_fit)
    ctx.model = res.model
    ctx.masks = None  # shapes changed; later stages start from the smaller dense model
    ctx.snapshot(f"after_structured_{cfg.criterion}")
    return {"criterion": cfg.criterion, "dense": res.dense, "pruned": res.pruned,
            "mac_reduction": res.mac_reduction,
            "shapes": {n: list(p.shape) for n, p in prunable_weights(ctx.model).items()},
            "distill": distill_summary(cfg.distill), "fade_epochs": cfg.fade_epochs,
            "removed_blocks": res.blocks}
