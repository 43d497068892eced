"""The experiment spec: the YAML a user writes, validated on load.

Field names are Kubernetes-style camelCase (familiar to Katib users); Python code reads the
snake_case attributes. Every rule lives here, so a bad spec is rejected before anything is recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kubetune import grid
from kubetune.architecture import (
    ACTIVATIONS,
    ARCHITECTURE_TYPES,
    BLOCK_DEFAULTS,
    CELL_DEFAULT_OPERATIONS,
    CELL_OPERATIONS,
    DEFAULT_WIDTHS,
    KINDS,
    MAX_CELL_NODES,
    MAX_FLAT_FEATURES,
    NORMS,
    cell_edges,
)
from kubetune.errors import UserError
from kubetune.fidelity import DEFAULT_MIN_FRACTION, FIDELITIES, MAX_LEVELS, Level, ladder, scaled
from kubetune.hyperparameters import DOMAINS, HYPERPARAMETERS, MAX_BATCH_SIZE, OPTIMIZERS
from kubetune.redaction import has_credentials, redact_url

__all__ = [
    "API_VERSION",
    "MAX_SPEC_FILE_BYTES",
    "MAX_SPEC_JSON_BYTES",
    "METRICS",
    "Experiment",
    "SpecError",
    "grid_points",
    "grid_space",
    "load_experiment",
    "parse_data",
    "parse_duration",
    "parse_experiment",
]

ApiVersion = Literal["kubetune/v1alpha1"]
API_VERSION: str = get_args(ApiVersion)[0]
# Metric name -> the direction that is better; the trainer and evaluator produce exactly these.
METRICS = {
    "val_accuracy": "maximize",
    "val_loss": "minimize",
    "params": "minimize",
    "train_seconds": "minimize",
}
# Metrics the trainer reports every epoch; pruning, and so any fidelity but epochs, needs the objective to be one.
EPOCH_METRICS = ("val_accuracy", "val_loss")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
DATA_SCHEMES = ("builtin", "file", "s3", "https", "http")
SAMPLERS = ("random", "grid", "tpe", "gp", "cmaes", "nsga2", "qmc", "evolution", "rl", "darts")
# The sampler each sampler-specific setting belongs to.
SAMPLER_SETTINGS = {
    "population": "evolution",
    "tournament": "evolution",
    "epochs": "darts",
    "searches": "darts",
    "history": "tpe",
}
MULTI_OBJECTIVE_SAMPLERS = ("random", "grid", "tpe", "gp", "nsga2", "qmc")
PRUNERS = ("none", "median", "asha", "hyperband", "curve")
MAX_TRIALS = 1_000_000  # a study's budget; benchmarks/study_scale.py measures studies of 100,000
MAX_REPEATS = 20  # strategy.seeds: whole searches, each a study of its own
MAX_SEED = 2**32 - 1  # numpy, and so every Optuna sampler, takes seeds in [0, 2**32)
MAX_GRID_POINTS = (
    100_000  # distinct configurations of a grid search; each ask walks the tree of those tried (BruteForceSampler)
)
# A spec file, comments included; its YAML aliases may not expand it past this size either (a "YAML bomb").
MAX_SPEC_FILE_BYTES = 256 * 1024
MAX_NESTING = 32  # levels of mappings and lists in a spec file; a real spec has fewer than 10
# The spec's compact JSON with every default. Each pipeline step receives it inside one command-line
# argument, where JSON escaping can double it and Linux allows 128 KiB (MAX_ARG_STRLEN).
MAX_SPEC_JSON_BYTES = 32 * 1024
MAX_WIDTH = 4096  # channels or features of one architecture block
MAX_KERNEL_SIZE = 64
MAX_PARAMETERS = 100_000_000  # about 400 MB of float32 weights, and three times that again for Adam's state
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)  # MLflow's own: the newest version, version N


class SpecError(UserError, ValueError):
    """A spec the user must fix; the message names every bad field, the rule and the value."""


class _FieldError(ValueError):
    """A rule checked by a validator above the field it concerns: ``path`` is relative to the validator."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``90s``, ``10m`` or ``1h30m``."""
    match = DURATION.fullmatch(text.strip())
    if not text.strip() or not match:
        raise ValueError(f"must be a duration such as 90s, 10m or 1h30m but got {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


class _Model(BaseModel):
    """Base: camelCase keys, unknown keys rejected (a typo must not be silently ignored)."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, allow_inf_nan=False
    )


class Metadata(_Model):
    name: str = Field(min_length=1, max_length=63)
    labels: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _dns1123(cls, value: str) -> str:
        if not DNS1123.fullmatch(value):  # match() would accept a trailing newline
            raise ValueError(
                "must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending "
                f"with a letter or digit, e.g. 'digits-cnn', but got {value!r}"
            )
        return value


class DataSpec(_Model):
    source: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    label_column: str = "label"
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        # Checked first, and the value is always shown redacted: error messages end up in logs.
        if has_credentials(value):
            raise ValueError(
                "must not carry credentials; give S3 keys through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                f"in the environment (a Kubernetes Secret in a cluster), but got {redact_url(value)!r}"
            )
        url = urlparse(value)
        if url.scheme not in DATA_SCHEMES:
            raise ValueError(
                f"must start with one of {', '.join(s + ':' for s in DATA_SCHEMES)} but got {redact_url(value)!r}"
            )
        if url.scheme == "builtin" and url.path not in ("digits", "mnist1d"):
            raise ValueError(f"builtin datasets are builtin:digits and builtin:mnist1d but got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        if round(self.validation_fraction + self.test_fraction, 9) > 0.9:
            raise ValueError(
                "validationFraction + testFraction must leave at least 10% for training but got "
                f"{self.validation_fraction} + {self.test_fraction}"
            )
        if urlparse(self.source).scheme in ("https", "http") and not self.sha256:
            raise _FieldError("sha256", "is required for an https:// source, so the download can be verified")
        return self


class Objective(_Model):
    metric: str
    direction: Literal["maximize", "minimize"] | None = None

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        return _one_of(value, METRICS)

    @property
    def resolved_direction(self) -> str:
        return self.direction or METRICS[self.metric]


class FloatParam(_Model):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    when: dict[str, list[Any]] | None = None

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self

    def grid_values(self) -> list[float]:
        return grid.steps(self.low, self.high, self.step or 1)


class IntParam(_Model):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int | None = Field(default=None, ge=1)
    when: dict[str, list[Any]] | None = None

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self

    def grid_values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step or 1))


class CategoricalParam(_Model):
    type: Literal["categorical"]
    choices: list[str | int | float | bool] = Field(min_length=1)
    when: dict[str, list[Any]] | None = None

    @field_validator("choices")
    @classmethod
    def _unique(cls, value: list) -> list:
        if len(set(value)) != len(value):  # Optuna cannot tell 1, 1.0 and true apart
            raise ValueError(f"choices must be unique (1, 1.0 and true count as equal) but got {value}")
        return value

    def grid_values(self) -> list[str | int | float | bool]:
        return list(self.choices)


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low must be at most high but got low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"log=true needs low > 0 but got low={low}")
    if log and step is not None:
        raise ValueError("log and step cannot be used together; drop one")


Parameter = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Choice(_Model):
    """One architecture dimension: a list of choices."""

    choices: list[str | int | float | bool] = Field(min_length=1)

    def grid_values(self) -> list[str | int | float | bool]:
        return list(self.choices)


class Range(_Model):
    """One architecture dimension: a numeric range."""

    low: float
    high: float
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _range(self) -> Range:
        _check_range(self.low, self.high, False, self.step)
        return self

    def grid_values(self) -> list[float]:
        return grid.steps(self.low, self.high, self.step or 1)


class IntRange(_Model):
    low: int = Field(ge=1)
    high: int = Field(ge=1, le=32)

    @model_validator(mode="after")
    def _range(self) -> IntRange:
        _check_range(self.low, self.high, False, None)
        return self


class BlockSpace(_Model):
    """Per-block choices; omitted dimensions take a fixed default. kernelSize applies to conv blocks only."""

    kind: Choice = Choice(choices=["conv"])
    width: Choice = Choice(choices=[32])
    kernel_size: Choice = Choice(choices=[BLOCK_DEFAULTS["kernelSize"]])
    activation: Choice = Choice(choices=[BLOCK_DEFAULTS["activation"]])
    norm: Choice = Choice(choices=[BLOCK_DEFAULTS["norm"]])
    dropout: Choice | Range = Choice(choices=[BLOCK_DEFAULTS["dropout"]])
    skip: Choice = Choice(choices=[BLOCK_DEFAULTS["skip"]])

    def dimensions(self) -> dict[str, Choice | Range]:
        """Each block field by its camelCase name, in :data:`kubetune.architecture.BLOCK_FIELDS` order."""
        return {to_camel(name): getattr(self, name) for name in type(self).model_fields}

    @model_validator(mode="after")
    def _allowed(self) -> BlockSpace:
        for field, allowed in (("kind", KINDS), ("activation", ACTIVATIONS), ("norm", NORMS)):
            bad = [c for c in getattr(self, field).choices if c not in allowed]
            if bad:
                raise _FieldError(field, f"choices must be among {list(allowed)} but got {bad}")
        for field, most in (("width", MAX_WIDTH), ("kernel_size", MAX_KERNEL_SIZE)):
            bad = [
                c
                for c in getattr(self, field).choices
                if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= most
            ]
            if bad:
                raise _FieldError(to_camel(field), f"choices must be integers from 1 to {most} but got {bad}")
        bad = [c for c in self.skip.choices if not isinstance(c, bool)]
        if bad:
            raise _FieldError("skip", f"choices must be true/false but got {bad}")
        dropouts = self.dropout.choices if isinstance(self.dropout, Choice) else [self.dropout.low, self.dropout.high]
        if any(isinstance(d, (bool, str)) or not 0.0 <= d < 1.0 for d in dropouts):
            raise _FieldError("dropout", f"must lie in [0, 1) but got {dropouts}")
        return self


class ArchitectureSpace(_Model):
    """A macro space: a stack of ``blocks`` blocks, each chosen field by field (``type`` may be left out)."""

    type: Literal["macro"] = "macro"
    blocks: IntRange = IntRange(low=1, high=3)
    block: BlockSpace = BlockSpace()

    @model_validator(mode="after")
    def _buildable(self) -> ArchitectureSpace:
        """Refused here rather than by a trial that cannot allocate its network."""
        parameters = largest_network(self)
        if parameters > MAX_PARAMETERS:
            block = self.block
            kernel = f", kernel {max(block.kernel_size.choices)}" if "conv" in block.kind.choices else ""
            raise ValueError(
                f"the largest network this space allows has about {parameters:,} parameters "
                f"({self.blocks.high} blocks of width {max(block.width.choices)}{kernel}), more than the "
                f"{MAX_PARAMETERS:,} a trial may have; lower block.width, block.kernelSize or blocks.high"
            )
        return self


class CellSpace(_Model):
    """A DAG cell searched edge by edge, stacked ``cells`` times (see :mod:`kubetune.cell_model`).

    ``nodes`` intermediate nodes, node j summing one operation of ``operations`` on each earlier state
    (the cell's input and nodes 1 to j-1); ``reductions`` of the stacked cells halve the spatial size and
    double the width first, so the widest cell has ``width * 2**reductions`` channels (flat inputs have
    no spatial size and ignore it).
    """

    type: Literal["cell"]
    nodes: int = Field(default=4, ge=1, le=MAX_CELL_NODES)
    operations: Choice = Choice(choices=list(CELL_DEFAULT_OPERATIONS))
    cells: IntRange = IntRange(low=1, high=3)
    width: Choice = Choice(choices=[16, 32])
    reductions: int = Field(default=1, ge=0, le=32)

    @model_validator(mode="after")
    def _allowed(self) -> CellSpace:
        for field in ("operations", "width"):
            choices = getattr(self, field).choices
            if len(set(choices)) != len(choices):
                raise _FieldError(field, f"choices must be unique but got {choices}")
        bad = [c for c in self.operations.choices if c not in CELL_OPERATIONS]
        if bad:
            raise _FieldError("operations", f"choices must be among {list(CELL_OPERATIONS)} but got {bad}")
        bad = [
            c for c in self.width.choices if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_WIDTH
        ]
        if bad:
            raise _FieldError("width", f"choices must be integers from 1 to {MAX_WIDTH} but got {bad}")
        if self.reductions > self.cells.low:
            raise _FieldError(
                "reductions",
                f"must not exceed cells.low ({self.cells.low}): each reduction is a cell of its own, in every "
                f"network of the space; but got {self.reductions}",
            )
        parameters = largest_network(self)
        if parameters > MAX_PARAMETERS:
            raise ValueError(
                f"the largest network this space allows has about {parameters:,} parameters "
                f"({self.cells.high} cells of {self.nodes} nodes, width {max(self.width.choices)} doubled "
                f"{self.reductions} times), more than the {MAX_PARAMETERS:,} a trial may have; lower width, "
                "nodes, cells.high or reductions"
            )
        return self

    @property
    def edges(self) -> list[tuple[int, int]]:
        """``(node, input)`` of every edge, in sampling order (:func:`kubetune.architecture.cell_edges`)."""
        return cell_edges(self.nodes)


def _architecture_type(value: Any) -> str:
    """The discriminator: ``type``, which a macro space may leave out."""
    return value.get("type", "macro") if isinstance(value, dict) else getattr(value, "type", "macro")


Architecture = Annotated[
    Annotated[ArchitectureSpace, Tag("macro")] | Annotated[CellSpace, Tag("cell")],
    Discriminator(_architecture_type),
]


def largest_network(space: ArchitectureSpace | CellSpace) -> int:
    """An upper bound on the parameters of a network of ``space``, but for what depends on the data.

    A cell edge has at most width x (9 x width + 3) parameters (a 3 x 3 convolution and its batch norm),
    every cell counted at the widest width and with a width x (width + 3) input projection. A block has width x (fan-in + 3) parameters at most: weights, bias and norm (a conv block counted
    as 2-D, k x k; an MLP block after a conv block takes at most MAX_FLAT_FEATURES inputs), and at most
    as many again for a skip projection. The first block's inputs and the head depend on the data's
    shape and classes, unknown here.
    """
    if isinstance(space, CellSpace):
        widest = max(int(c) for c in space.width.choices) * 2**space.reductions
        operations = set(space.operations.choices)
        square = 9 if "conv3" in operations else 1 if operations & {"conv1", "linear"} else 0
        per_edge = widest * (square * widest + 3) if square else 0
        return space.cells.high * (len(space.edges) * per_edge + widest * (widest + 3))
    block = space.block
    width = max(int(c) for c in block.width.choices)  # validated integers
    fan_ins = []
    if "conv" in block.kind.choices:
        fan_ins.append(width * max(int(c) for c in block.kernel_size.choices) ** 2)
    if "mlp" in block.kind.choices:
        fan_ins.append(max(width, MAX_FLAT_FEATURES) if "conv" in block.kind.choices else width)
    projections = 2 if True in block.skip.choices else 1
    return space.blocks.high * width * (max(fan_ins) + 3) * projections


class SamplerSpec(_Model):
    name: str = "tpe"
    seed: int | None = Field(default=0, ge=0, le=MAX_SEED)
    # Regularized evolution (sampler evolution): the last ``population`` finished trials are the
    # population, a tournament of ``tournament`` of them picks the parent.
    population: int = Field(default=20, ge=2, le=10_000)
    tournament: int = Field(default=5, ge=2, le=10_000)
    # DARTS (sampler darts): each search trains the supernet's weights and operation weights for ``epochs``;
    # ``searches`` of them (by default one per frame of cells and width) each derive a cell that trials train.
    epochs: int = Field(default=10, ge=1, le=1_000)
    searches: int | None = Field(default=None, ge=1, le=100)
    # TPE (sampler tpe): model the running trials, the last ``history`` complete or pruned ones and the best 25, not
    # every trial, so what an ask models stops growing with the study (kubetune.tpe); None models every trial.
    history: int | None = Field(default=None, ge=50, le=100_000)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of(value, SAMPLERS)


class PrunerSpec(_Model):
    name: str = "none"
    min_resource: int = Field(default=1, ge=1)
    reduction_factor: int = Field(default=3, ge=2)
    warmup_steps: int = Field(default=0, ge=0)
    startup_trials: int = Field(default=5, ge=0)
    # Pruner curve: stop a trial once its chance of beating the incumbent at trial.epochs falls below this.
    threshold: float = Field(default=0.05, gt=0.0, lt=1.0)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of(value, PRUNERS)

    @model_validator(mode="after")
    def _threshold_for_curve(self) -> PrunerSpec:
        if self.name != "curve" and self.threshold != PrunerSpec.model_fields["threshold"].default:
            raise _FieldError(
                "threshold", f"applies to pruner curve only but pruner is {self.name!r}; remove it or use pruner curve"
            )
        return self


class OneShotSpec(_Model):
    """Rank candidates with a weight-sharing supernet before the search (:mod:`kubetune.one_shot`)."""

    top_k: int = Field(default=4, ge=1, le=1_000)  # enqueued as the first trials
    candidates: int = Field(default=200, ge=1, le=100_000)  # scored per supernet (frame of cells and width)
    epochs: int = Field(default=10, ge=1, le=1_000)  # each supernet's training


class WarmStartSpec(_Model):
    """Start with the configurations the meta model of earlier experiments scores best (:mod:`kubetune.warm_start`).

    ``warmStart: meta`` is short for ``warmStart: {source: meta}``.
    """

    source: Literal["meta"] = "meta"  # the model `kubetune meta fit` registers as kubetune-meta
    trials: int = Field(default=3, ge=1, le=1_000)  # enqueued as the first trials
    candidates: int = Field(default=500, ge=1, le=100_000)  # sampled from the space and scored

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value


class Strategy(_Model):
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    # A mutated child starts from its parent's trained weights (sampler evolution only).
    inherit_weights: bool = False
    one_shot: OneShotSpec | None = None
    # Repeat the whole search this many times (sampler seed, seed + 1, ...), each a study of its own.
    seeds: int = Field(default=1, ge=1, le=MAX_REPEATS)
    # Also spend the same budget on random search, in sibling studies (see kubetune.siblings).
    baseline: Literal["none", "random"] = "none"
    warm_start: WarmStartSpec | None = None

    @model_validator(mode="after")
    def _sampler_settings(self) -> Strategy:
        sampler = self.sampler
        for setting, owner in SAMPLER_SETTINGS.items():
            if sampler.name != owner and getattr(sampler, setting) != SamplerSpec.model_fields[setting].default:
                raise _FieldError(
                    f"sampler.{setting}", f"applies to sampler {owner} only but sampler is {sampler.name!r}"
                )
        if sampler.tournament > sampler.population:
            raise _FieldError(
                "sampler.tournament",
                f"must not exceed sampler.population ({sampler.population}) but got {sampler.tournament}",
            )
        if self.inherit_weights and sampler.name != "evolution":
            raise _FieldError(
                "inheritWeights",
                f"needs sampler evolution (a child inherits its parent's weights) but sampler is {sampler.name!r}",
            )
        return self


class Budget(_Model):
    max_trials: int = Field(default=20, ge=1, le=MAX_TRIALS)
    parallel_trials: int = Field(default=2, ge=1, le=1_000)
    trials_per_segment: int = Field(default=20, ge=1, le=500)
    max_segments: int = Field(default=100, ge=1, le=10_000)
    max_duration: str | None = None
    target_value: float | None = None
    patience: int | None = Field(default=None, ge=1)

    @field_validator("max_duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) < 1:
            raise ValueError(f"must be at least 1s but got {value!r}")
        return value

    @property
    def max_duration_seconds(self) -> int | None:
        return None if self.max_duration is None else parse_duration(self.max_duration)


class Resources(_Model):
    cpu: str = "1"
    memory: str = "2Gi"
    gpu: int = Field(default=0, ge=0, le=16)
    gpu_type: str = "nvidia.com/gpu"

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, value: Any) -> str:
        text = str(value)
        if not QUANTITY.fullmatch(text):
            raise ValueError(f"must be a Kubernetes quantity such as 500m, 2, 4Gi but got {value!r}")
        return text


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class FidelitySpec(_Model):
    """What a trial's intermediate values are measured at (see :mod:`kubetune.fidelity`); a bare kind is allowed."""

    kind: str = "epochs"
    min_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _bare_kind(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("kind")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of(value, FIDELITIES)

    @model_validator(mode="after")
    def _fraction_for_levels(self) -> FidelitySpec:
        if self.kind == "epochs" and self.min_fraction is not None:
            raise _FieldError(
                "minFraction", "applies to kind dataFraction or width only but kind is epochs; drop it or change kind"
            )
        return self

    @property
    def lowest(self) -> float:
        """The smallest fraction a level may train with."""
        return DEFAULT_MIN_FRACTION if self.min_fraction is None else self.min_fraction


class TrialSpec(_Model):
    epochs: int = Field(default=10, ge=1, le=10_000)
    # Trials one pod runs in turn (suggest, train, evaluate each), so short trials pay the pods' start-up once.
    trials_per_pod: int = Field(default=1, ge=1, le=100)
    fidelity: FidelitySpec = FidelitySpec()
    batch_size: int = Field(default=64, ge=1, le=MAX_BATCH_SIZE)
    retries: int = Field(default=1, ge=0, le=10)
    heartbeat_seconds: int = Field(default=30, ge=5, le=3600)
    resources: Resources = Resources()
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    image: str | None = None


class RegistrySpec(_Model):
    model_name: str | None = Field(default=None, min_length=1, max_length=256)
    alias: str = Field(default="champion", max_length=255, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        """Checked here: MLflow refuses a bad name only when the first model is registered, at a run's end."""
        if value is not None and not MODEL_NAME.fullmatch(value):
            raise ValueError(
                "must hold only letters, digits, '.', '_' and '-', starting with a letter, digit or '_' (it names "
                f"the MLflow registered model and goes into models:/<name>@<alias> URIs), but got {value!r}"
            )
        return value

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if RESERVED_ALIAS.fullmatch(value):
            raise ValueError(
                f"is reserved by MLflow ('latest' and v<number> name versions); use another alias such as "
                f"'champion', but got {value!r}"
            )
        return value


class ExperimentSpec(_Model):
    data: DataSpec
    objective: list[Objective] = Field(min_length=1)
    parameters: dict[str, Parameter] = {}
    architecture: Architecture | None = None
    strategy: Strategy = Strategy()
    budget: Budget = Budget()
    trial: TrialSpec = TrialSpec()
    registry: RegistrySpec = RegistrySpec()

    @field_validator("objective", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """A single objective may be written as a mapping instead of a one-item list."""
        return [value] if isinstance(value, dict) else value

    @field_validator("objective")
    @classmethod
    def _unique_metrics(cls, value: list[Objective]) -> list[Objective]:
        metrics = [o.metric for o in value]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"metrics must be unique but got {metrics}")
        return value

    @field_validator("architecture", mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> Any:
        """Named here: the union would report an unknown type at ``architecture`` without the rule."""
        kind = _architecture_type(value)
        if isinstance(value, dict) and kind not in ARCHITECTURE_TYPES:
            raise _FieldError("type", f"must be {' or '.join(map(repr, ARCHITECTURE_TYPES))} but got {kind!r}")
        return value

    @field_validator("parameters")
    @classmethod
    def _known_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, param in value.items():
            if name not in HYPERPARAMETERS:
                raise _FieldError(
                    name,
                    f"{name!r} is not a hyperparameter the trainer understands; use one of "
                    f"{', '.join(HYPERPARAMETERS)} (the architecture goes under spec.architecture)",
                )
            _check_values(name, param)
        _check_conditions(value)
        return value

    @property
    def objectives(self) -> list[Objective]:
        return list(self.objective)

    @property
    def directions(self) -> list[str]:
        return [o.resolved_direction for o in self.objectives]

    @property
    def is_multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @model_validator(mode="after")
    def _strategy_fits(self) -> ExperimentSpec:
        sampler, pruner = self.strategy.sampler.name, self.strategy.pruner.name
        if self.is_multi_objective:
            if sampler not in MULTI_OBJECTIVE_SAMPLERS:
                raise _FieldError(
                    "strategy.sampler.name",
                    f"sampler {sampler!r} handles one objective only; with several use nsga2, tpe or random",
                )
            if pruner != "none":
                raise _FieldError(
                    "strategy.pruner.name",
                    f"pruner {pruner!r} needs a single objective; use pruner none with several objectives",
                )
            if self.budget.target_value is not None:
                raise _FieldError("budget.targetValue", "needs a single objective")
            if self.budget.patience is not None:
                raise _FieldError("budget.patience", "needs a single objective")
            if self.strategy.sampler.history is not None:
                raise _FieldError(
                    "strategy.sampler.history",
                    f"keeps the best trials by value, which needs a single objective, but got "
                    f"{self.strategy.sampler.history} with {len(self.objectives)} objectives; remove it",
                )
        if pruner != "none" and self.strategy.pruner.min_resource > self.trial.epochs:
            raise _FieldError(
                "strategy.pruner.minResource",
                f"must not exceed trial.epochs ({self.trial.epochs}) but got {self.strategy.pruner.min_resource}",
            )
        if sampler == "grid":
            _check_finite(self)
        if self.strategy.inherit_weights and self.architecture is None:
            raise _FieldError(
                "strategy.inheritWeights", "needs an architecture space: only a trained network has weights to inherit"
            )
        return self

    @property
    def uses_supernet(self) -> bool:
        """Whether a supernet step runs before the lanes: for strategy.oneShot or sampler darts."""
        return self.strategy.one_shot is not None or self.strategy.sampler.name == "darts"

    @model_validator(mode="after")
    def _supernet_fits(self) -> ExperimentSpec:
        """A supernet holds every operation of a cell space's edges: a macro space has none to share."""
        one_shot, darts = self.strategy.one_shot, self.strategy.sampler.name == "darts"
        where = "strategy.oneShot" if one_shot is not None else "strategy.sampler.name"
        if self.uses_supernet and not isinstance(self.architecture, CellSpace):
            raise _FieldError(
                where,
                "needs architecture.type cell: the weight-sharing supernet holds every operation of a cell's edges; "
                "use another sampler, or drop oneShot, for a macro space or none",
            )
        if one_shot is not None and darts:
            raise _FieldError(
                "strategy.oneShot", "does not combine with sampler darts, whose trials are DARTS's cells; drop one"
            )
        warm = self.strategy.warm_start
        if warm is not None and darts:
            raise _FieldError(
                "strategy.warmStart", "does not combine with sampler darts, whose trials are DARTS's cells; drop one"
            )
        if warm is not None and warm.trials > self.budget.max_trials:
            raise _FieldError(
                "strategy.warmStart.trials",
                f"must not exceed budget.maxTrials ({self.budget.max_trials}) but got {warm.trials}",
            )
        if one_shot is not None and one_shot.top_k > self.budget.max_trials:
            raise _FieldError(
                "strategy.oneShot.topK",
                f"must not exceed budget.maxTrials ({self.budget.max_trials}) but got {one_shot.top_k}",
            )
        return self

    @property
    def fidelity_ladder(self) -> list[Level]:
        """The levels a trial climbs with fidelity dataFraction or width (:func:`kubetune.fidelity.ladder`)."""
        return ladder(self.trial.fidelity.lowest, self.strategy.pruner.reduction_factor)

    @model_validator(mode="after")
    def _fidelity_fits(self) -> ExperimentSpec:
        """Levels only pay off when a pruner stops trials between them and each level reports the objective."""
        kind, pruner = self.trial.fidelity.kind, self.strategy.pruner
        if kind == "epochs":
            return self
        if pruner.name == "none":
            raise _FieldError(
                "trial.fidelity.kind",
                f"{kind} needs a pruner (strategy.pruner.name median, asha or hyperband): without one every trial "
                "trains every level and none is stopped; name a pruner or use kind epochs",
            )
        if pruner.name == "curve":
            raise _FieldError(
                "strategy.pruner.name",
                f"curve extrapolates a curve of epochs and needs fidelity epochs; with fidelity {kind} a trial "
                "reports only a few levels, too few to fit: use median, asha or hyperband, or fidelity epochs",
            )
        metric = self.objectives[0].metric
        if metric not in EPOCH_METRICS:
            raise _FieldError(
                "trial.fidelity.kind",
                f"{kind} needs the objective to be {' or '.join(EPOCH_METRICS)}, the value each level reports, "
                f"but the objective is {metric!r}",
            )
        if pruner.min_resource != PrunerSpec.model_fields["min_resource"].default:
            raise _FieldError(
                "strategy.pruner.minResource",
                f"applies to fidelity epochs only; with fidelity {kind} the smallest level is trial.fidelity."
                f"minFraction, so leave minResource out, but got {pruner.min_resource}",
            )
        if self.strategy.inherit_weights:
            raise _FieldError(
                "strategy.inheritWeights",
                f"needs fidelity epochs: with fidelity {kind} every level trains a fresh network",
            )
        levels = self.fidelity_ladder
        if not 2 <= len(levels) <= MAX_LEVELS:
            raise _FieldError(
                "trial.fidelity.minFraction",
                f"must give 2 to {MAX_LEVELS} levels (1, 1/{pruner.reduction_factor}, "
                f"1/{pruner.reduction_factor}^2, ... down to minFraction) but {self.trial.fidelity.lowest} gives "
                f"{len(levels)}; use a minFraction from {pruner.reduction_factor ** -(MAX_LEVELS - 1):.3g} to "
                f"{1 / pruner.reduction_factor:.3g}",
            )
        if kind == "width":
            narrowest = _narrowest_width(self.architecture)
            if scaled(narrowest, levels[0].fraction) < 1:
                raise _FieldError(
                    "trial.fidelity.minFraction",
                    f"must leave every width at least 1 at the smallest level, but {narrowest} x "
                    f"{levels[0].fraction:.3g} rounds to 0; use a minFraction of at least {0.5 / narrowest:.3g} "
                    "or wider choices",
                )
        return self


def _one_of(value: str, allowed: Collection[str]) -> str:
    """``value`` when it is a name in ``allowed``; the field validators' one message otherwise."""
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)} but got {value!r}")
    return value


def _narrowest_width(space: ArchitectureSpace | CellSpace | None) -> int:
    """The narrowest width a network of ``space`` can have; without a space, the default network's (32)."""
    if space is None:
        return min(DEFAULT_WIDTHS.values())
    choices = space.width.choices if isinstance(space, CellSpace) else space.block.width.choices
    return min(int(c) for c in choices)


def _check_values(name: str, param: Any) -> None:
    """Every value ``param`` can take must be one the trainer accepts, so that no trial fails on it."""
    if name == "optimizer":
        bad = [c for c in getattr(param, "choices", [None]) if c not in OPTIMIZERS]
        if bad:
            raise _FieldError(name, f"must be categorical with choices among {list(OPTIMIZERS)} but got {bad}")
        return
    domain = DOMAINS[name]
    if isinstance(param, CategoricalParam):
        bad = [c for c in param.choices if not domain.admits(c)]
        if bad:
            raise _FieldError(name, f"choices must each be {domain.describe()} but got {bad}")
    elif domain.integer and isinstance(param, FloatParam):
        raise _FieldError(name, f"takes integers: make it type int or categorical, not {param.type}")
    else:
        ends = (("low", param.low), ("high", param.high))
        bad = [f"{end}={value}" for end, value in ends if not domain.admits(value)]
        if bad:
            raise _FieldError(name, f"low and high must each be {domain.describe()} but got {', '.join(bad)}")


def _check_conditions(parameters: dict[str, Any]) -> None:
    """`when: {other: [values]}` may only refer to another categorical parameter's choices, without cycles."""
    for name, param in parameters.items():
        for other, values in (param.when or {}).items():
            parent = parameters.get(other)
            if not isinstance(parent, CategoricalParam) or other == name:
                raise _FieldError(
                    f"{name}.when.{other}", f"refers to {other!r}, which must be another categorical parameter"
                )
            bad = [v for v in values if v not in parent.choices]
            if bad:
                raise _FieldError(f"{name}.when.{other}", f"values must be among {parent.choices} but got {bad}")
    sampling_order(parameters)


def sampling_order(parameters: dict[str, Any]) -> list[str]:
    """Parameter names with every parent before the parameters whose `when` refers to it."""
    ordered: list[str] = []
    pending = list(parameters)
    while pending:
        ready = [n for n in pending if all(p in ordered for p in (parameters[n].when or {}))]
        if not ready:
            raise ValueError(f"the `when` conditions of {pending} refer to each other in a cycle")
        ordered += ready
        pending = [n for n in pending if n not in ready]
    return ordered


def _check_finite(spec: ExperimentSpec) -> None:
    for name, param in spec.parameters.items():
        if isinstance(param, FloatParam) and param.step is None:
            raise _FieldError(
                f"parameters.{name}", "sampler grid needs a finite space: give it a step or make it categorical"
            )
    if (
        isinstance(spec.architecture, ArchitectureSpace)
        and isinstance(spec.architecture.block.dropout, Range)
        and spec.architecture.block.dropout.step is None
    ):
        raise _FieldError("architecture.block.dropout", "sampler grid needs a finite space: give it a step or choices")
    points = grid_points(spec)
    if points > MAX_GRID_POINTS:
        raise _FieldError(
            "strategy.sampler.name",
            f"grid over this space has {points:,} points, more than the {MAX_GRID_POINTS:,} a grid search can list; "
            "narrow the space (fewer choices, larger steps, fewer blocks) or use tpe or random",
        )


def grid_space(spec: ExperimentSpec) -> dict[str, list]:
    """The values each dimension can take: every parameter by name; for a macro space ``arch.blocks`` and
    each block field once, as ``arch.block.<field>``; for a cell space ``arch.cells``, ``arch.width`` and
    ``arch.cell.operations`` (every edge's). Not the grid's points: those depend on the values chosen (see
    grid_points)."""
    values = {name: param.grid_values() for name, param in spec.parameters.items()}
    space = spec.architecture
    if isinstance(space, CellSpace):
        values["arch.cells"] = list(range(space.cells.low, space.cells.high + 1))
        values["arch.width"] = space.width.grid_values()
        values["arch.cell.operations"] = space.operations.grid_values()
    elif space is not None:
        values["arch.blocks"] = list(range(space.blocks.low, space.blocks.high + 1))
        values.update({f"arch.block.{field}": d.grid_values() for field, d in space.block.dimensions().items()})
    return values


def grid_points(spec: ExperimentSpec) -> int:
    """How many distinct configurations a grid search over ``spec`` tries (finite once the spec is valid)."""
    values = grid_space(spec)
    conditions = {name: param.when or {} for name, param in spec.parameters.items()}
    points = grid.parameter_points(values, conditions, sampling_order(spec.parameters))
    if isinstance(spec.architecture, CellSpace):
        points *= grid.cell_points(
            len(values["arch.cells"]),
            len(values["arch.width"]),
            len(values["arch.cell.operations"]),
            len(spec.architecture.edges),
        )
    elif spec.architecture is not None:
        fields = spec.architecture.block.dimensions()
        points *= grid.architecture_points(
            values["arch.blocks"], {field: values[f"arch.block.{field}"] for field in fields}
        )
    return points


class Experiment(_Model):
    api_version: ApiVersion
    kind: Literal["Experiment"]
    metadata: Metadata
    spec: ExperimentSpec

    @model_validator(mode="after")
    def _sibling_names_fit(self) -> Experiment:
        """A sibling study's name (kubetune.siblings) is the experiment's with a suffix, and must fit too."""
        strategy = self.spec.strategy
        suffix = ("-baseline-random" if strategy.baseline == "random" else "") + (
            f"-seed-{strategy.seeds}" if strategy.seeds > 1 else ""
        )
        limit = Metadata.model_fields["name"].metadata[-1].max_length
        if suffix and len(self.name) + len(suffix) > limit:
            raise _FieldError(
                "metadata.name",
                f"must be at most {limit - len(suffix)} characters with this strategy's sibling studies (the longest "
                f"is the name with {suffix!r}, at most {limit}) but has {len(self.name)}; shorten it",
            )
        return self

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def model_name(self) -> str:
        return self.spec.registry.model_name or self.metadata.name

    def to_dict(self) -> dict:
        """The spec as plain JSON types with the user's camelCase keys."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.spec.strategy.sampler.seed is None:  # null means "no seed"; dropped, it would read back as 0
            data["spec"].setdefault("strategy", {}).setdefault("sampler", {})["seed"] = None
        return data

    def to_json(self) -> str:
        # Not sort_keys: parameter order is meaningful (a `when` refers to an earlier parameter).
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def search_space_fingerprint(self) -> str:
        """A hash of what defines the search (data, objective, space); budget changes keep it."""
        part = self.to_dict()["spec"]
        keep = {k: part.get(k) for k in ("data", "objective", "parameters", "architecture", "trial")}
        keep["trial"] = {"epochs": part["trial"]["epochs"], "batchSize": part["trial"]["batchSize"]}
        fidelity = self.spec.trial.fidelity.kind
        if fidelity != "epochs":  # what each step means; epochs, the default, keeps the fingerprints of old
            levels = [[level.step, level.fraction] for level in self.spec.fidelity_ladder]
            keep["trial"]["fidelity"] = {"kind": fidelity, "levels": levels}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


UNION_TAGS = {"float", "int", "categorical", "str", "bool", *ARCHITECTURE_TYPES}


def _location(loc: tuple, document: Any, root: str = "") -> str:
    """``spec.parameters.lr.low`` from pydantic's loc, without the union member names it inserts.

    The loc is walked along the user's document, so a key the user wrote (``MaxTrials``, ``float``) is
    always named, and a union member name (``Choice``, ``float``, ``function-after[...]``) never is.
    """
    path, node = root, document
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int):
            node = node[part] if 0 <= part < len(node) else None
        elif isinstance(part, str) and (part in UNION_TAGS or part[:1].isupper() or "[" in part):
            continue
        else:
            node = None
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _problems(error: ValidationError, document: Any, root: str = "") -> list[str]:
    """One ``path: rule (got value)`` line per problem, without repeats; paths start at ``root``."""
    lines = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        location = _location(item["loc"], document, root)
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, _FieldError):
            location = f"{location}.{cause.path}" if location != "(top level)" else cause.path
        value = item.get("input")
        if "but got" in message or (item["type"] == "value_error" and isinstance(value, dict)):
            received = ""  # the message names the value, or the value is a whole mapping
        else:
            received = f" (got {_preview(value)})"
        if item["type"] == "missing":
            received = " (add it)"
        if item["type"] == "extra_forbidden":
            message, received = "unknown field", " (check the spelling; fields are camelCase)"
        lines.append(f"{location}: {message}{received}")
    return list(dict.fromkeys(lines))


def _preview(value: Any, limit: int = 80) -> str:
    """The start of ``value`` as JSON, encoded only as far as shown: a received value can be large."""
    text = ""
    for chunk in json.JSONEncoder(default=str).iterencode(value):
        text += chunk
        if len(text) >= limit:
            break
    return text[:limit]


def parse_experiment(data: Any) -> Experiment:
    """Validate an already-parsed YAML/JSON document."""
    if not isinstance(data, dict):
        raise SpecError(f"invalid experiment spec: the document must be a mapping but got {type(data).__name__}")
    try:
        experiment = Experiment.model_validate(data)
    except ValidationError as error:
        raise SpecError("invalid experiment spec:\n  " + "\n  ".join(_problems(error, data))) from None
    size = len(experiment.to_json())
    if size > MAX_SPEC_JSON_BYTES:
        raise SpecError(
            f"invalid experiment spec: it is {size:,} bytes as JSON with every default, more than the "
            f"{MAX_SPEC_JSON_BYTES:,} a spec may have (every pipeline step receives it as a command-line "
            "argument); shorten its longest parts (labels, choices, nodeSelector, tolerations)"
        )
    return experiment


def parse_data(data: Any) -> DataSpec:
    """Validate ``spec.data`` alone (what the retrieve step reads), by the rules of a whole spec.

    Keys that are missing or null take their defaults. The message is one line: a step's error is logged as one.
    """
    if not isinstance(data, dict):
        raise SpecError(f"data must be a mapping but got {type(data).__name__}")
    given = {key: value for key, value in data.items() if value is not None}
    try:
        return DataSpec.model_validate(given)
    except ValidationError as error:
        raise SpecError("invalid data options: " + "; ".join(_problems(error, given, "data"))) from None


class _Refused(yaml.MarkedYAMLError):
    """A document refused while it is composed, before it can take the time or memory it asks for."""


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that counts each alias (``*name``) as the whole value it stands for.

    PyYAML shares an aliased value instead of copying it, so a few hundred bytes of nested aliases
    (a "YAML bomb") load at once but expand to gigabytes when validated or printed; merge keys
    (``<<: [*a, *a]``) expand while loading. Each node's expanded size (one per value plus the
    characters of each scalar) is summed as it is composed and refused past MAX_SPEC_FILE_BYTES, as are
    aliases to a value that contains them and nesting deeper than MAX_NESTING.
    """

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, for every node composed so far
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise _Refused(
                    problem=f"the alias *{event.anchor} refers to a value that contains it",
                    problem_mark=event.start_mark,
                )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise _Refused(
                    problem=f"values nest deeper than {MAX_NESTING} levels", problem_mark=self.peek_event().start_mark
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = size = self._expanded_size(node)
        if size > MAX_SPEC_FILE_BYTES:
            raise _Refused(
                problem=f"this value expands to more than {MAX_SPEC_FILE_BYTES:,} characters once its aliases "
                "(*name) are replaced by the values they stand for; write the spec without aliases",
                problem_mark=node.start_mark,
            )
        return node

    def _expanded_size(self, node: yaml.Node) -> int:
        if isinstance(node, yaml.ScalarNode):
            return 1 + len(node.value)
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        return 1 + sum(self._sizes[id(child)] for child in children)


def _read_limited(path: Path) -> bytes:
    """The file's bytes; a SpecError if it cannot be read or holds more than MAX_SPEC_FILE_BYTES."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SPEC_FILE_BYTES + 1)  # never more: the path may be /dev/zero or a huge file
    except OSError as error:
        raise SpecError(f"cannot read experiment file {str(path)!r}: {error.strerror}") from None
    if len(raw) > MAX_SPEC_FILE_BYTES:
        raise SpecError(
            f"{path}: the spec file is larger than {MAX_SPEC_FILE_BYTES:,} bytes, the most a spec file may have; "
            "a spec needs a few kilobytes: check that this is the right file"
        )
    return raw


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    raw = _read_limited(path)
    try:
        data = yaml.load(raw, Loader=_SpecLoader)
    except _Refused as error:
        mark = error.problem_mark
        raise SpecError(f"{path}: line {mark.line + 1}, column {mark.column + 1}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from None
    return parse_experiment(data)
