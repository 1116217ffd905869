"""HashedNets (Q13) as a quantizer: the chosen Linear layers become ``HashedLinear`` layers
whose buckets start as the average of the trained weights (``hash_model``); the run's
fine-tuning (optional) then trains the buckets. The file stores the buckets, biases and
seeds; the ``hashed`` architecture record (``nncompress.quantize.hashed_arch``) lets
``nncompress.load`` rebuild the hashed model."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from nncompress.decompose.api import lowrank_spec
from nncompress.errors import ConfigError
from nncompress.quantize.hashed import HashedLinear
from nncompress.quantize.hashed_arch import hash_model
from nncompress.quantize.registry import (
    QuantizerConfig,
    QuantizeResult,
    QuantizeRun,
    register_quantizer,
)


@dataclass
class HashedConfig(QuantizerConfig):
    """Options of ``method: hashed`` (Q13, HashedNets): exactly one of ``ratio``,
    ``compression`` or ``buckets``.

    Example:
        >>> HashedConfig(compression=8).training()
        'optional'
    """

    ratio: float | None = None
    """Real buckets per virtual weight, in (0, 1]."""
    compression: float | None = None
    """Virtual weights per bucket, >= 1 (= 1 / ratio)."""
    buckets: dict[str, int] | None = None
    """Buckets K >= 1 per Linear layer; only those layers are hashed."""
    seed: int | None = None
    """Hash seed (default: the run's seed); layer k in module order hashes with seed + k."""
    sign_hash: bool = True
    """The random-sign hash xi of the paper."""
    include: list[str] | None = None
    """Glob patterns of the Linear layers to hash (not with ``buckets``)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of Linear layers left alone (not with ``buckets``)."""

    def __post_init__(self) -> None:
        given = [k for k in ("ratio", "compression", "buckets") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"method hashed needs exactly one of ratio, compression or buckets, "
                              f"got {given or 'none'}")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"ratio={self.ratio!r} out of range; allowed: (0, 1]")
        if self.compression is not None and not self.compression >= 1:
            raise ConfigError(f"compression={self.compression!r} out of range; allowed: >= 1")
        for name, k in (self.buckets or {}).items():
            if k < 1:
                raise ConfigError(f"buckets.{name}={k!r} out of range; allowed: an integer in "
                                  f"[1, the layer's in x out]")
        if self.buckets is not None and (self.include is not None or self.exclude):
            raise ConfigError("method hashed: give 'buckets' or 'include'/'exclude', not both")

    def training(self) -> str:
        return "optional"


def _matches(name: str, include: list[str] | None, exclude: list[str]) -> bool:
    if include is not None and not any(fnmatch.fnmatch(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(name, p) for p in exclude)


@register_quantizer(HashedConfig, name="hashed")
def quantize_hashed(model: nn.Module, config: HashedConfig, run: QuantizeRun) -> QuantizeResult:
    """Hash the chosen Linear layers (recording the hashed architecture), then fine-tune the
    buckets if the run says so. Summary: per layer buckets, virtual weights, compression
    and seed."""
    linears = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    ratio = config.ratio if config.ratio is not None else (
        1.0 / config.compression if config.compression is not None else None)
    buckets = dict(config.buckets) if config.buckets is not None else None
    if buckets is None and (config.include is not None or config.exclude):
        chosen = [n for n in linears if _matches(n, config.include, config.exclude)]
        if not chosen:
            raise ConfigError(f"include={config.include} / exclude={config.exclude} leave no Linear layer to "
                              f"hash; Linear layers: {sorted(linears)}")
        # K as hash_model computes it from ratio, restricted to the chosen layers
        buckets = {n: max(1, round(ratio * linears[n].in_features * linears[n].out_features)) for n in chosen}
        ratio = None
    targets = list(buckets) if buckets is not None else list(linears)
    inside = [t for t in targets for lr in lowrank_spec(model) if t.startswith(f"{lr}.")]
    if inside:
        raise ConfigError(f"method hashed cannot hash {inside}, factors of decomposed layers (the file could "
                          f"not rebuild both); exclude them or hash before decompose")
    seed = config.seed if config.seed is not None else run.seed
    hash_model(model, ratio=ratio, buckets=buckets, seed=seed, sign_hash=config.sign_hash)  # records the arch
    if run.finetune is not None:
        run.fit(model, run.finetune)
    layers = {n: {"buckets": m.buckets, "virtual": m.in_features * m.out_features,
                  "compression": m.compression(), "seed": m.seed}
              for n, m in model.named_modules() if isinstance(m, HashedLinear)}
    return QuantizeResult(model, {"layers": layers, "sign_hash": config.sign_hash})
