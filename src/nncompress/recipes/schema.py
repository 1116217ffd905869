"""The recipe file: model, data, seed and an ordered list of stages."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nncompress.errors import ConfigError
from nncompress.recipes.stages import STAGES
from nncompress.recipes.validate import from_dict

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; anything near this is not one
MAX_MODEL_PARAMETERS = 1 << 30  # 4 GiB of fp32 weights: model arguments beyond this are a typo
CPU_CHECK_PARAMETERS = 1 << 26  # up to 256 MiB of fp32 weights: built and run once on the CPU
NUM_CLASSES = 10  # every built-in dataset (fashion-mnist, mnist, digits) has 10 classes


@dataclass
class ModelSpec:
    """``model:`` of a recipe: a built-in ``name`` (+ ``kwargs``), or the user's
    ``factory: "package.module:function"`` (+ ``kwargs``, optional ``checkpoint`` state dict
    read with ``weights_only=True``), or ``huggingface: PATH`` (a local transformers model)."""

    name: str | None = None
    """A built-in model (default lenet300 when no factory or huggingface is given)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of the built-in model or of the factory."""
    factory: str | None = None
    """``package.module:function`` returning an ``nn.Module`` (imported when the recipe is read)."""
    checkpoint: str | None = None
    """A state dict file loaded into the factory's model (``torch.load(weights_only=True)``)."""
    huggingface: str | None = None
    """Folder of a Hugging Face model (``nncompress.models.huggingface.load_pretrained``)."""

    def __post_init__(self) -> None:
        given = [k for k in ("name", "factory", "huggingface") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"give one of name, factory or huggingface, not {given}")
        if self.checkpoint is not None and self.factory is None:
            raise ConfigError("checkpoint loads a state dict into a factory's model; add 'factory'")
        if self.factory is not None:
            from nncompress.factory import import_factory

            import_factory(self.factory, "model factory")  # a path that does not import fails now
            return
        if self.huggingface is not None:
            if self.kwargs:
                raise ConfigError("huggingface takes no kwargs")
            from nncompress.models.huggingface import BUNDLED

            if self.huggingface not in BUNDLED and not Path(self.huggingface).exists():
                raise ConfigError(f"huggingface {self.huggingface!r} does not exist; give a local model folder "
                                  f"or a bundled model ({', '.join(sorted(BUNDLED))})")
            return
        if self.name is None:
            self.name = "lenet300"
        check_model_spec(self.name, self.kwargs)

    @property
    def kind(self) -> str:
        """``builtin``, ``factory`` or ``huggingface``."""
        return "factory" if self.factory else "huggingface" if self.huggingface else "builtin"


CORPUS_KEYS = {"source": "debian", "calib": 512, "train": 8192, "test": 1024, "seed": 0}


def corpus_sizes(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``data.corpus`` with its defaults, checked: ``source`` debian, positive split sizes.

    Example:
        >>> corpus_sizes({"train": 100})["test"]
        1024
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"data.corpus must be a mapping such as {CORPUS_KEYS}, got {spec!r}")
    bad = sorted(set(spec) - set(CORPUS_KEYS))
    if bad:
        raise ConfigError(f"data.corpus: unknown key(s) {bad}; allowed: {sorted(CORPUS_KEYS)}")
    out = {**CORPUS_KEYS, **spec}
    if out["source"] != "debian":
        raise ConfigError(f"data.corpus.source {out['source']!r} not allowed; allowed: ['debian']")
    for k in ("calib", "train", "test"):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"data.corpus.{k}={v!r} not allowed; allowed: a positive integer")
    if isinstance(out["seed"], bool) or not isinstance(out["seed"], int) or out["seed"] < 0:
        raise ConfigError(f"data.corpus.seed={out['seed']!r} not allowed; allowed: an integer >= 0")
    return out


@dataclass
class DataSpec:
    """``data:`` of a recipe: a built-in ``name``, the user's ``factory`` (+ ``kwargs``)
    returning the train and test sets, or ``text: {calib, train, test}`` files of sentences
    (tokenized with the Hugging Face model's tokenizer)."""

    name: str | None = None
    """fashion-mnist, mnist or digits (default fashion-mnist when no factory or text)."""
    root: str | None = None
    """Folder with the IDX files of a built-in set."""
    train_subset: int | None = None
    """Train on this many randomly chosen training samples (a Dataset only)."""
    factory: str | None = None
    """``package.module:function`` returning ``(train, test)`` or ``{"train", "test"[, "calib"]}``,
    each a ``Dataset`` or ``DataLoader``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of the data factory."""
    text: dict[str, str] | None = None
    """Sentence files ``{calib: F, train: F, test: F}`` (one sentence a line)."""
    corpus: dict[str, Any] | None = None
    """Text built at run time instead of files: ``{source: debian, calib: N, train: N,
    test: N, seed: S}`` writes disjoint splits of the package descriptions of Debian's
    package lists (``nncompress corpus``) to a temporary folder and reads them as ``text``."""

    def __post_init__(self) -> None:
        n = self.train_subset
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"train_subset must be a positive integer (training images to use), got {n!r}")
        given = [k for k in ("name", "factory", "text", "corpus") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"give one of name, factory, text or corpus, not {given}")
        if self.corpus is not None:
            corpus_sizes(self.corpus)
            return
        if self.kwargs and self.factory is None:
            raise ConfigError("kwargs are the data factory's arguments; add 'factory'")
        if self.factory is not None:
            from nncompress.factory import import_factory

            import_factory(self.factory, "data factory")
            return
        if self.text is not None:
            bad = sorted(set(self.text) - {"calib", "train", "test"})
            if bad or "test" not in self.text:
                raise ConfigError(f"text: keys {sorted(self.text)}; allowed calib, train, test (test required)")
            for k, f in self.text.items():
                if not Path(f).is_file():
                    raise ConfigError(f"text.{k}: file {f!r} does not exist")
            return
        from nncompress.data.datasets import check_data_args

        if self.name is None:
            self.name = "fashion-mnist"
        check_data_args(self.name, self.root)

    @property
    def label(self) -> str:
        """What the report and the file call this data."""
        return self.name or self.factory or ("corpus" if self.corpus else "text")


@dataclass
class FactorySpec:
    """``loss:`` / ``metric:`` of a recipe: ``{factory: "package.module:function", kwargs}``;
    the factory returns a callable ``fn(output, target)`` or ``fn(output, target, inputs)``
    (a loss: a scalar tensor to minimise; a metric: a batch mean, higher is better)."""

    factory: str = ""
    """``package.module:function`` building the callable."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of the factory."""

    def __post_init__(self) -> None:
        from nncompress.factory import import_factory

        import_factory(self.factory, "factory")


def check_model_spec(name: str, kwargs: dict[str, Any]) -> None:
    """Build the model and run one batch of 1x28x28 images through it, so that an unknown
    model, an unknown or bad argument (a negative width, a dropout of 2) or a model that does
    not fit the data fails when the recipe is read, before any training. The parameter count
    comes from a build on torch's meta device (no memory), so absurd widths are refused
    without allocating; a model of sane size is then built and run on the CPU (milliseconds
    for the built-in nets; a forward pass on the meta device would cost a second of torch's
    decomposition machinery). ``ConfigError`` names the model and its arguments."""
    import torch

    from nncompress.models import MODELS, build_model

    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"name: unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    shown = f"model {name!r} with kwargs {_short(dict(kwargs), 200)}"
    _no_negative_counts(kwargs, "kwargs")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with torch.device("meta"):
                    n = sum(p.numel() for p in build_model(name, **kwargs).parameters())
            except ConfigError:
                raise
            except Exception:  # noqa: BLE001 - a constructor that reads real values: count on the CPU below
                n = None
            if n is not None and n > MAX_MODEL_PARAMETERS:
                raise ConfigError(f"it has {n:,} parameters, more than the {MAX_MODEL_PARAMETERS:,} allowed: "
                                  "check the widths")
            if n is not None and n > CPU_CHECK_PARAMETERS:
                return  # large but allowed: not worth building twice just to check
            model = build_model(name, **kwargs)
            model.eval()
            with torch.no_grad():
                out = model(torch.zeros(2, 1, 28, 28))
    except ConfigError as exc:
        raise ConfigError(f"bad {shown}: {exc}") from exc
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError, ZeroDivisionError) as exc:
        raise ConfigError(f"bad {shown}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < NUM_CLASSES:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"bad {shown}: it maps a batch of 1x28x28 images to {shape}, not to (batch, "
                          f">= {NUM_CLASSES}) class scores")


def _no_negative_counts(value: Any, where: str) -> None:
    """Model arguments are widths, counts, sizes and probabilities: none is negative (a
    ``seed`` may be anything)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)) and value < 0:
        raise ConfigError(f"{where} must be >= 0 (a width, count or size), got {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k) != "seed":
                _no_negative_counts(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_negative_counts(v, f"{where}[{i}]")


@dataclass
class Reference:
    """One point of ``references:``, drawn beside the run in the report's accuracy-vs-size
    figure: a peer measured elsewhere (``bytes`` and ``accuracy``) or a published figure
    given only as a compression ``ratio`` (drawn as a line at the size that ratio gives
    this run's dense model)."""

    label: str = ""
    """What the point is, e.g. ``peer pipeline (torch prune + sklearn KMeans), seed 0``."""
    source: str = ""
    """Where the figure comes from: a results file of the benchmarks or a paper."""
    bytes: int | None = None
    """File size in bytes (give this or ``ratio``)."""
    ratio: float | None = None
    """Compression ratio vs the dense fp32 model, when no size applies to this set-up."""
    accuracy: float | None = None
    """Test accuracy as a fraction in [0, 1] (0.8951, not 89.51); none for a ratio-only figure."""

    def __post_init__(self) -> None:
        for key in ("label", "source"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise ConfigError(f"{key} is required: a non-empty text, got {getattr(self, key)!r}")
        if (self.bytes is None) == (self.ratio is None):
            raise ConfigError(f"give one of bytes (a file size) or ratio (a compression ratio), got "
                              f"bytes={self.bytes!r}, ratio={self.ratio!r}")
        if self.bytes is not None and (isinstance(self.bytes, bool) or not isinstance(self.bytes, int)
                                       or self.bytes < 1):
            raise ConfigError(f"bytes={self.bytes!r} not allowed; allowed: a positive integer (a file size)")
        if self.ratio is not None and not (isinstance(self.ratio, (int, float)) and not isinstance(self.ratio, bool)
                                           and math.isfinite(self.ratio) and self.ratio > 0):
            raise ConfigError(f"ratio={self.ratio!r} not allowed; allowed: a positive number (e.g. 40 for 40x)")
        if self.accuracy is not None and not (isinstance(self.accuracy, (int, float))
                                              and not isinstance(self.accuracy, bool)
                                              and 0 <= self.accuracy <= 1):
            hint = " (a fraction: write 0.8951 for 89.51%)" if isinstance(self.accuracy, (int, float)) else ""
            raise ConfigError(f"accuracy={self.accuracy!r} not allowed; allowed: a number in [0, 1]{hint}")

    def to_dict(self) -> dict[str, Any]:
        """The point as the report stores it (unset fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_references(raw: Any, source: str) -> list[Reference]:
    """``references:`` of a recipe: a list of mappings, each a ``Reference``.

    Example:
        >>> parse_references([{"label": "paper", "ratio": 40, "source": "Han et al. 2016"}], "r")[0].ratio
        40.0
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: references must be a list of {{label, bytes or ratio, accuracy, source}}, "
                          f"got {_short(raw)}")
    return [from_dict(Reference, item, f"{source}: references[{i}]") for i, item in enumerate(raw)]


@dataclass
class Stage:
    name: str
    config: Any


@dataclass
class Recipe:
    name: str
    model: ModelSpec
    data: DataSpec
    stages: list[Stage]
    seed: int = 0
    description: str = ""
    loss: FactorySpec | None = None
    metric: FactorySpec | None = None
    references: list[Reference] = field(default_factory=list)


_TOP_KEYS = {"name", "description", "model", "data", "seed", "stages", "loss", "metric", "references"}


def parse_recipe(raw: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping (as loaded from YAML) into a typed ``Recipe``.

    Example:
        >>> parse_recipe({"name": "x", "stages": [{"evaluate": {}}]}).stages[0].name
        'evaluate'
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a YAML mapping with keys {sorted(_TOP_KEYS)}, "
                          f"got {type(raw).__name__} {_short(raw)}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{source}: 'stages' must be a non-empty list, e.g. [{{train: {{epochs: 5}}}}]")
    stages, problems = [], []
    for i, item in enumerate(stages_raw):  # every stage checked: all problems in one error
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            problems.append(f"{source}: stages[{i}] must be a one-key mapping like {{prune: {{...}}}}, got "
                            f"{_short(item)}")
            continue
        (name, opts), = item.items()
        try:
            spec = STAGES.get(name)
            stages.append(Stage(name, from_dict(spec.config, opts, f"{source}: stages[{i}].{name}")))
        except ConfigError as exc:
            problems.append(str(exc) if str(exc).startswith(source) else f"{source}: stages[{i}]: {exc}")
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems: " + "; ".join(problems))
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(f"{source}: seed must be an integer in [0, 2**63), got {seed!r}")
    return Recipe(
        name=str(raw.get("name", Path(source).stem)),
        model=from_dict(ModelSpec, raw.get("model"), f"{source}: model"),
        data=from_dict(DataSpec, raw.get("data"), f"{source}: data"),
        stages=stages, seed=seed, description=str(raw.get("description", "")),
        loss=None if raw.get("loss") is None else from_dict(FactorySpec, raw["loss"], f"{source}: loss"),
        metric=None if raw.get("metric") is None else from_dict(FactorySpec, raw["metric"], f"{source}: metric"),
        references=parse_references(raw.get("references"), source),
    )


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with nncompress."""
    folder = resources.files("nncompress.recipes") / "builtin"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _recipe_text(path: Path) -> str:
    """The text of a recipe file; ``ConfigError`` naming the file when it is not YAML text."""
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise ConfigError(f"recipe file {path} is {size:,} bytes; a recipe is a YAML text file of at "
                              f"most {MAX_RECIPE_BYTES:,} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"recipe file {path} cannot be read: {exc.strerror or exc}") from exc
    if b"\0" in data:
        raise ConfigError(f"recipe file {path} is a binary file (it holds NUL bytes), not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe file {path} is not UTF-8 text (bad byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start}); a recipe is a YAML text file") from exc


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a built-in recipe by name or a YAML file by path.

    Anything that is not a recipe raises ``ConfigError`` naming the file: a missing path, a
    folder, a binary or non-UTF-8 file, YAML that does not parse or is not a mapping.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or path.is_symlink() or "/" in str(name_or_path):
        if not path.exists():
            raise ConfigError(f"recipe file {path} does not exist; give a YAML file or a built-in name "
                              f"({', '.join(builtin_recipes())})")
        if path.is_dir():
            raise ConfigError(f"recipe {path} is a directory; give a YAML file or a built-in name "
                              f"({', '.join(builtin_recipes())})")
        if not path.is_file():
            raise ConfigError(f"recipe {path} is not a regular file; give a YAML file")
        text, source = _recipe_text(path), str(path)
    else:
        names = builtin_recipes()
        if str(name_or_path) not in names:
            raise ConfigError(f"unknown recipe {name_or_path!r}: not a file, and built-ins are {names}")
        text = (resources.files("nncompress.recipes") / "builtin" / f"{name_or_path}.yaml").read_text()
        source = str(name_or_path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML ({exc})") from exc
    except RecursionError as exc:
        raise ConfigError(f"{source}: YAML nested too deeply to be a recipe") from exc
    return parse_recipe(raw, source)
