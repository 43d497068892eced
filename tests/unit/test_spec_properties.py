"""Property tests for kubetune.spec: every malformed spec is a SpecError naming the mutated field's path;
every spec generated within the rules loads, round-trips and can be sampled."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.storages import InMemoryStorage
from torch import nn

from kubetune import cell_model
from kubetune.architecture import ACTIVATIONS, CELL_OPERATIONS, KINDS, NORMS
from kubetune.data import SplitData
from kubetune.encoding import decode, encode
from kubetune.hyperparameters import DOMAINS, HYPERPARAMETERS, OPTIMIZERS
from kubetune.space import sample
from kubetune.spec import (
    MAX_GRID_POINTS,
    METRICS,
    PRUNERS,
    ArchitectureSpace,
    BlockSpace,
    Budget,
    CategoricalParam,
    Choice,
    DataSpec,
    Experiment,
    ExperimentSpec,
    FloatParam,
    IntParam,
    IntRange,
    Metadata,
    Objective,
    PrunerSpec,
    Range,
    RegistrySpec,
    Resources,
    SamplerSpec,
    SpecError,
    Strategy,
    Toleration,
    TrialSpec,
    grid_points,
    grid_space,
    parse_experiment,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
DELETE = object()

BASE = {
    "apiVersion": "kubetune/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "prop-test", "labels": {"team": "ml"}},
    "spec": {
        "data": {
            "source": "builtin:digits",
            "sha256": "0" * 64,
            "validationFraction": 0.2,
            "testFraction": 0.2,
            "seed": 1,
        },
        "objective": [{"metric": "val_accuracy", "direction": "maximize"}],
        "parameters": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "weightDecay": {"type": "float", "low": 0.0, "high": 0.1},
            "batchSize": {"type": "int", "low": 16, "high": 128, "step": 16},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["sgd"]}},
            "labelSmoothing": {"type": "categorical", "choices": [0.0, 0.1]},
        },
        "architecture": {
            "type": "macro",
            "blocks": {"low": 1, "high": 3},
            "block": {
                "kind": {"choices": ["conv", "mlp"]},
                "width": {"choices": [16, 32]},
                "kernelSize": {"choices": [3, 5]},
                "activation": {"choices": ["relu", "gelu"]},
                "norm": {"choices": ["none", "batch"]},
                "dropout": {"low": 0.0, "high": 0.3},
                "skip": {"choices": [True, False]},
            },
        },
        "strategy": {
            "sampler": {"name": "tpe", "seed": 0},
            "pruner": {"name": "hyperband", "minResource": 1, "reductionFactor": 3},
        },
        "budget": {
            "maxTrials": 20,
            "parallelTrials": 2,
            "trialsPerSegment": 10,
            "maxSegments": 5,
            "maxDuration": "10m",
            "targetValue": 0.99,
            "patience": 5,
        },
        "trial": {
            "epochs": 5,
            "batchSize": 64,
            "retries": 1,
            "heartbeatSeconds": 30,
            "resources": {"cpu": "1", "memory": "2Gi", "gpu": 0, "gpuType": "nvidia.com/gpu"},
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "registry": {"modelName": "prop-model", "alias": "champion"},
    },
}


def _keys(path: str) -> list:
    """``spec.objective[0].metric`` -> ["spec", "objective", 0, "metric"]."""
    keys: list = []
    for part in path.split("."):
        name, *indices = re.split(r"\[(\d+)\]", part)
        if name:
            keys.append(name)
        keys.extend(int(i) for i in indices if i)
    return keys


def _mutate(path: str, value) -> dict:
    document = copy.deepcopy(BASE)
    *parents, last = _keys(path) if path else [None]
    node = document
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return document


def _assert_rejected(document: dict, path: str, text: str | None = None) -> None:
    with pytest.raises(SpecError) as caught:
        parse_experiment(document)
    message = str(caught.value)
    lines = message.splitlines()
    assert lines[0] == "invalid experiment spec:"
    assert any(line.startswith(f"  {path}") for line in lines[1:]), f"{path!r} not named in:\n{message}"
    if text is not None:
        assert text in message, f"{text!r} missing from:\n{message}"


def test_base_document_is_valid():
    assert parse_experiment(copy.deepcopy(BASE)).name == "prop-test"


# ---------------------------------------------------------------- malformed specs

INT_FIELDS = {
    "spec.budget.maxTrials": (1, 1_000_000),
    "spec.budget.parallelTrials": (1, 1_000),
    "spec.budget.trialsPerSegment": (1, 500),
    "spec.budget.maxSegments": (1, 10_000),
    "spec.budget.patience": (1, None),
    "spec.trial.epochs": (1, 10_000),
    "spec.trial.batchSize": (1, 65_536),
    "spec.trial.retries": (0, 10),
    "spec.trial.heartbeatSeconds": (5, 3_600),
    "spec.trial.trialsPerPod": (1, 100),
    "spec.trial.resources.gpu": (0, 16),
    "spec.data.seed": (0, 2**32 - 1),
    "spec.strategy.sampler.seed": (0, 2**32 - 1),
    "spec.strategy.seeds": (1, 20),
    "spec.strategy.pruner.minResource": (1, None),
    "spec.strategy.pruner.reductionFactor": (2, None),
    "spec.strategy.pruner.warmupSteps": (0, None),
    "spec.strategy.pruner.startupTrials": (0, None),
    "spec.architecture.blocks.low": (1, None),
    "spec.architecture.blocks.high": (1, 32),
    "spec.parameters.batchSize.low": (None, None),
    "spec.parameters.batchSize.step": (1, None),
}
NULLABLE = {
    "spec.budget.patience",
    "spec.strategy.sampler.seed",
    "spec.budget.targetValue",
    "spec.budget.maxDuration",
    "spec.data.sha256",
    "spec.registry.modelName",
    "spec.architecture",
    "spec.parameters.batchSize.step",
    "spec.objective[0].direction",
    "spec.trial.tolerations[0].key",
}
FLOAT_FIELDS = [
    "spec.data.validationFraction",
    "spec.data.testFraction",
    "spec.budget.targetValue",
    "spec.parameters.lr.low",
    "spec.parameters.weightDecay.high",
    "spec.parameters.momentum.low",
    "spec.architecture.block.dropout.high",
]
STR_FIELDS = [
    "metadata.name",
    "spec.data.source",
    "spec.data.sha256",
    "spec.strategy.sampler.name",
    "spec.strategy.pruner.name",
    "spec.budget.maxDuration",
    "spec.registry.alias",
    "spec.registry.modelName",
    "spec.objective[0].metric",
    "spec.objective[0].direction",
    "spec.trial.resources.gpuType",
    "spec.trial.tolerations[0].key",
    "spec.trial.nodeSelector.pool",
    "metadata.labels.team",
]
MAPPING_FIELDS = [
    "metadata",
    "spec",
    "spec.data",
    "spec.budget",
    "spec.trial",
    "spec.trial.resources",
    "spec.architecture",
    "spec.architecture.block",
    "spec.architecture.blocks",
    "spec.strategy",
    "spec.strategy.sampler",
    "spec.strategy.pruner",
    "spec.registry",
    "spec.parameters",
    "spec.parameters.lr",
    "spec.architecture.block.width",
    "spec.trial.tolerations[0]",
    "spec.objective[0]",
    "spec.trial.nodeSelector",
]
LIST_FIELDS = [
    "spec.trial.tolerations",
    "spec.parameters.optimizer.choices",
    "spec.architecture.block.kind.choices",
    "spec.architecture.block.width.choices",
]
BOOL_FIELDS = ["spec.parameters.lr.log", "spec.parameters.batchSize.log"]

letters = st.text(alphabet=st.characters(categories=["L"]), min_size=1, max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)
small_lists = st.lists(st.integers(), min_size=1, max_size=3)
small_dicts = st.dictionaries(letters, st.integers(), min_size=1, max_size=2)


def _wrong_type(path: str):
    nullable = [] if path in NULLABLE else [st.none()]
    if path in INT_FIELDS:
        fractional = finite.filter(lambda x: x != int(x))
        return st.one_of(letters, small_lists, small_dicts, fractional, *nullable)
    if path in FLOAT_FIELDS:
        return st.one_of(
            letters.filter(lambda s: s.lower() not in {"nan", "inf", "infinity"}),
            small_lists,
            small_dicts,
            st.sampled_from([float("inf"), float("-inf"), float("nan")]),
            *nullable,
        )
    if path in STR_FIELDS:
        return st.one_of(st.integers(), finite, st.booleans(), small_lists, small_dicts, *nullable)
    if path in MAPPING_FIELDS:
        return st.one_of(st.integers(), letters, small_lists, st.booleans())
    if path in LIST_FIELDS:
        return st.one_of(st.integers(), letters, small_dicts)
    assert path in BOOL_FIELDS
    return st.one_of(
        st.integers().filter(lambda i: i not in (0, 1)),
        small_lists,
        small_dicts,
        letters.filter(lambda s: s.lower() not in {"y", "n", "t", "f", "yes", "no", "on", "off", "true", "false"}),
    )


ALL_TYPED = sorted(INT_FIELDS) + FLOAT_FIELDS + STR_FIELDS + MAPPING_FIELDS + LIST_FIELDS + BOOL_FIELDS
wrong_types = st.sampled_from(ALL_TYPED).flatmap(lambda p: st.tuples(st.just(p), _wrong_type(p)))


@SETTINGS
@given(wrong_types)
def test_wrong_types_are_rejected(mutation):
    path, value = mutation
    _assert_rejected(_mutate(path, value), path)


REQUIRED = {
    "apiVersion": "apiVersion",
    "kind": "kind",
    "metadata": "metadata",
    "metadata.name": "metadata.name",
    "spec": "spec",
    "spec.data": "spec.data",
    "spec.data.source": "spec.data.source",
    "spec.objective": "spec.objective",
    "spec.objective[0].metric": "spec.objective[0].metric",
    "spec.parameters.lr.low": "spec.parameters.lr.low",
    "spec.parameters.batchSize.high": "spec.parameters.batchSize.high",
    "spec.parameters.optimizer.choices": "spec.parameters.optimizer.choices",
    "spec.parameters.lr.type": "spec.parameters.lr",  # the union cannot even tell which kind it is
    "spec.architecture.blocks.low": "spec.architecture.blocks.low",
    "spec.architecture.block.width.choices": "spec.architecture.block.width.choices",
    "spec.architecture.block.dropout.low": "spec.architecture.block.dropout.low",
}


@pytest.mark.parametrize("path", REQUIRED)
def test_missing_required_fields(path):
    _assert_rejected(_mutate(path, DELETE), REQUIRED[path], "add it" if path != "spec.parameters.lr.type" else None)


def _inverted(draw_low_high):
    return draw_low_high.filter(lambda pair: pair[0] > pair[1])


INVERTED = st.one_of(
    st.tuples(
        st.just("spec.parameters.weightDecay"),
        _inverted(st.tuples(finite, finite)).map(lambda p: {"type": "float", "low": p[0], "high": p[1]}),
    ),
    st.tuples(
        st.just("spec.parameters.lr"),
        _inverted(st.tuples(st.floats(1e-300, 1e300), st.floats(1e-300, 1e300))).map(
            lambda p: {"type": "float", "low": p[0], "high": p[1], "log": True}
        ),
    ),
    st.tuples(
        st.just("spec.parameters.batchSize"),
        _inverted(st.tuples(st.integers(), st.integers())).map(lambda p: {"type": "int", "low": p[0], "high": p[1]}),
    ),
    st.tuples(
        st.just("spec.architecture.blocks"),
        _inverted(st.tuples(st.integers(1, 32), st.integers(1, 32))).map(lambda p: {"low": p[0], "high": p[1]}),
    ),
    st.tuples(
        st.just("spec.architecture.block.dropout"),
        _inverted(st.tuples(st.floats(0, 0.99), st.floats(0, 0.99))).map(lambda p: {"low": p[0], "high": p[1]}),
    ),
)


@SETTINGS
@given(INVERTED)
def test_low_above_high_is_rejected(mutation):
    path, value = mutation
    _assert_rejected(_mutate(path, value), path, "low must be at most high")


CHOICE_PATHS = ["spec.parameters.optimizer.choices", "spec.parameters.labelSmoothing.choices"] + [
    f"spec.architecture.block.{f}.choices" for f in ("kind", "width", "kernelSize", "activation", "norm", "skip")
]
scalar = st.one_of(st.integers(-5, 5), st.floats(-2, 2, allow_nan=False), st.booleans(), letters)


@SETTINGS
@given(st.sampled_from(CHOICE_PATHS))
def test_empty_choices_are_rejected(path):
    _assert_rejected(_mutate(path, []), path, "at least 1 item")


@SETTINGS
@given(
    st.one_of(
        st.tuples(
            st.just("spec.parameters.optimizer.choices"),
            st.lists(st.sampled_from(OPTIMIZERS), min_size=1, max_size=4, unique=True),
        ),
        st.tuples(
            st.just("spec.parameters.labelSmoothing.choices"), st.lists(scalar, min_size=1, max_size=5, unique=True)
        ),
    ),
    st.data(),
)
def test_duplicate_choices_are_rejected(mutation, data):
    path, choices = mutation
    repeated = data.draw(st.sampled_from(choices))
    position = data.draw(st.integers(0, len(choices)))
    choices = choices[:position] + [repeated] + choices[position:]
    _assert_rejected(_mutate(path, choices), path, "unique")


MODELS = {
    "": Experiment,
    "metadata": Metadata,
    "spec": ExperimentSpec,
    "spec.data": DataSpec,
    "spec.objective[0]": Objective,
    "spec.parameters.lr": FloatParam,
    "spec.parameters.batchSize": IntParam,
    "spec.parameters.optimizer": CategoricalParam,
    "spec.architecture": ArchitectureSpace,
    "spec.architecture.blocks": IntRange,
    "spec.architecture.block": BlockSpace,
    "spec.architecture.block.width": Choice,
    "spec.architecture.block.dropout": Range,
    "spec.strategy": Strategy,
    "spec.strategy.sampler": SamplerSpec,
    "spec.strategy.pruner": PrunerSpec,
    "spec.budget": Budget,
    "spec.trial": TrialSpec,
    "spec.trial.resources": Resources,
    "spec.trial.tolerations[0]": Toleration,
    "spec.registry": RegistrySpec,
}
KNOWN = {
    where: set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    for where, model in MODELS.items()
}
identifiers = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,15}\Z")


@SETTINGS
@given(st.sampled_from(sorted(MODELS)), identifiers, st.one_of(st.integers(), letters, st.none()), st.data())
def test_unknown_keys_are_rejected(where, key, value, data):
    key = data.draw(identifiers.filter(lambda k: k not in KNOWN[where])) if key in KNOWN[where] else key
    path = f"{where}.{key}" if where else key
    _assert_rejected(_mutate(path, value), path, "unknown field")


@SETTINGS
@given(identifiers.filter(lambda k: k not in HYPERPARAMETERS))
def test_unknown_hyperparameters_are_rejected(name):
    _assert_rejected(
        _mutate(f"spec.parameters.{name}", {"type": "float", "low": 0.0, "high": 1.0}),
        f"spec.parameters.{name}",
        "not a hyperparameter",
    )


LOWER_BOUNDED = {path: low for path, (low, _) in INT_FIELDS.items() if low is not None}
UPPER_BOUNDED = {path: high for path, (_, high) in INT_FIELDS.items() if high is not None}


@SETTINGS
@given(
    st.sampled_from(sorted(LOWER_BOUNDED)).flatmap(
        lambda p: st.tuples(st.just(p), st.integers(max_value=LOWER_BOUNDED[p] - 1, min_value=-(10**30)))
    )
)
def test_negative_and_zero_counts_are_rejected(mutation):
    path, value = mutation
    _assert_rejected(_mutate(path, value), path, "greater than or equal to")


@SETTINGS
@given(
    st.one_of(
        st.sampled_from(sorted(UPPER_BOUNDED)).flatmap(
            lambda p: st.tuples(st.just(p), st.integers(min_value=UPPER_BOUNDED[p] + 1, max_value=10**30))
        ),
        st.tuples(
            st.just("metadata.name"), st.text(alphabet="abz09-", min_size=1, max_size=20).map(lambda t: "a" * 63 + t)
        ),
        st.tuples(st.just("spec.registry.modelName"), st.integers(257, 2_000).map(lambda n: "m" * n)),
        st.tuples(
            st.sampled_from(["spec.parameters.weightDecay.high", "spec.budget.targetValue"]),
            st.sampled_from([float("inf"), float("-inf"), float("nan")]),
        ),
    )
)
def test_huge_values_are_rejected(mutation):
    path, value = mutation
    _assert_rejected(_mutate(path, value), path)


DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _is_dns1123(name: str) -> bool:
    return 1 <= len(name) <= 63 and DNS1123.fullmatch(name) is not None


@SETTINGS
@given(
    st.one_of(
        st.text(max_size=70),
        st.from_regex(r"\A[a-z0-9]{1,8}[A-Z_. /:\n][a-z0-9]{0,8}\Z"),
        st.from_regex(r"\A-?[a-z0-9-]{0,10}-?\n?\Z"),
    ).filter(lambda name: not _is_dns1123(name))
)
def test_non_dns1123_names_are_rejected(name):
    _assert_rejected(_mutate("metadata.name", name), "metadata.name")


@SETTINGS
@given(
    st.one_of(
        st.text(max_size=12),
        st.from_regex(r"\A[0-9]{1,3}[a-z ]{1,4}\Z"),
    ).filter(lambda text: re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?", text.strip()) is None or not text.strip())
)
def test_bad_durations_are_rejected(text):
    _assert_rejected(_mutate("spec.budget.maxDuration", text), "spec.budget.maxDuration")


# Numbers on, inside and beyond each hyperparameter's bounds, and scalars of the other YAML types.
edge_numbers = st.one_of(
    st.sampled_from([-1, 0, 1e-9, 0.5, 0.999, 1, 2, 64, 65_536, 65_537]), st.floats(-2, 70_000), st.integers(-3, 70_000)
)
edge_scalars = st.one_of(edge_numbers, st.booleans(), st.sampled_from(["0.01", "64", "adam"]))


@st.composite
def hostile_parameters(draw):
    name = draw(st.sampled_from(sorted(DOMAINS)))
    kind = draw(st.sampled_from(["float", "int", "categorical"]))
    if kind == "categorical":
        return name, {"type": kind, "choices": draw(st.lists(edge_scalars, min_size=1, max_size=3, unique=True))}
    cast = float if kind == "float" else int
    low, high = sorted(cast(v) for v in draw(st.tuples(edge_numbers, edge_numbers)))
    return name, {"type": kind, "low": low, "high": high}


TINY = SplitData(
    x_train=np.arange(32, dtype=np.float32).reshape(8, 4),
    y_train=np.array([0, 1] * 4),
    x_val=np.ones((2, 4), np.float32),
    y_val=np.array([0, 1]),
    x_test=np.ones((0, 4), np.float32),
    y_test=np.array([], dtype=np.int64),
    num_classes=2,
    input_shape=(4,),
)


@SETTINGS
@given(hostile_parameters())
def test_a_hyperparameter_is_refused_or_the_trainer_takes_every_value_it_can_get(mutation):
    """No trial may fail on a value the spec let through: either validation names the parameter, or
    the trainer accepts the bounds and what the sampler picks."""
    from kubetune.space import trainer_hyperparameters
    from kubetune.train import train_model

    name, param = mutation
    try:
        experiment = parse_experiment(_mutate(f"spec.parameters.{name}", param))
    except SpecError as error:
        assert f"spec.parameters.{name}" in str(error)
        return
    study = optuna.create_study(storage=InMemoryStorage(), sampler=optuna.samplers.RandomSampler(seed=0))
    picked = [sample(study.ask(), experiment.spec)[0] for _ in range(3)]
    bounds = [{name: value} for value in param.get("choices", [param.get("low"), param.get("high")])]
    for chosen in picked + bounds:
        hyperparameters = trainer_hyperparameters(experiment.spec, {**picked[0], **chosen})
        train_model(nn.Linear(4, 2), TINY, epochs=1, hyperparameters=hyperparameters, seed=0)


# ---------------------------------------------------------------- valid specs

ALNUM = "abcxyz0129"
names = st.one_of(
    st.sampled_from(ALNUM),
    st.builds(
        lambda a, middle, b: a + middle + b,
        st.sampled_from(ALNUM),
        st.text(alphabet=ALNUM + "-", max_size=20),
        st.sampled_from(ALNUM),
    ),
)
aliases = st.builds(lambda a, rest: a + rest, st.sampled_from("aZ_"), st.text(alphabet="aZ09_-", max_size=10))
sha256s = st.integers(0, 2**256 - 1).map(lambda i: f"{i:064x}")


@st.composite
def float_params(draw, *, finite_only: bool, lowest: float = -1e3, highest: float = 1e3):
    low = draw(st.floats(lowest, highest))
    high = draw(st.floats(low, highest))
    param = {"type": "float", "low": low, "high": high}
    if low > 0 and draw(st.booleans()) and not finite_only:
        param["log"] = True
    elif finite_only or draw(st.booleans()):
        param["step"] = draw(st.floats(max((high - low) / 20, 1e-3), max(high - low, 1e-3)))
    return param


@st.composite
def int_params(draw, lowest: int = -100, highest: int = 300):
    low = draw(st.integers(lowest, min(highest, lowest + 200)))
    param = {"type": "int", "low": low, "high": draw(st.integers(low, min(highest, low + 200)))}
    if low >= 1 and draw(st.booleans()):
        param["log"] = True
    elif draw(st.booleans()):
        param["step"] = draw(st.integers(1, 10))
    return param


def categorical_params(values=scalar):
    return st.lists(values, min_size=1, max_size=5, unique=True).map(lambda c: {"type": "categorical", "choices": c})


def in_domain(name: str, *, finite_only: bool):
    """A parameter ``name`` whose every value the trainer accepts (DOMAINS), as the spec requires."""
    domain = DOMAINS[name]
    lowest = domain.low + (1e-6 if domain.low_open else 0)
    highest = min(domain.high, 1e3) - (1e-6 if domain.high_open else 0)
    if domain.integer:
        numbers = st.integers(int(lowest), int(domain.high))
        return st.one_of(int_params(int(lowest), int(domain.high)), categorical_params(numbers))
    return st.one_of(
        float_params(finite_only=finite_only, lowest=lowest, highest=highest),
        categorical_params(st.floats(lowest, highest)),
    )


@st.composite
def parameters(draw, *, finite_only: bool):
    chosen = {}
    for name in draw(
        st.lists(
            st.sampled_from([n for n in HYPERPARAMETERS if n not in ("optimizer", "momentum")]), unique=True, max_size=4
        )
    ):
        chosen[name] = draw(in_domain(name, finite_only=finite_only))
    if draw(st.booleans()):
        optimizers = draw(st.lists(st.sampled_from(OPTIMIZERS), min_size=1, unique=True))
        chosen["optimizer"] = {"type": "categorical", "choices": optimizers}
        if draw(st.booleans()):
            momentum = draw(in_domain("momentum", finite_only=finite_only))
            momentum["when"] = {"optimizer": draw(st.lists(st.sampled_from(optimizers), min_size=1, unique=True))}
            chosen["momentum"] = momentum
    return chosen


def choice_of(values, *, min_size=1):
    return st.lists(st.sampled_from(values), min_size=min_size, unique=True).map(lambda c: {"choices": c})


@st.composite
def architectures(draw, *, finite_only: bool):
    low = draw(st.integers(1, 3))
    block = {}
    for field, values in (
        ("kind", KINDS),
        ("activation", ACTIVATIONS),
        ("norm", NORMS),
        ("skip", [True, False]),
        ("width", [4, 8, 16, 64]),
        ("kernelSize", [1, 3, 5]),
    ):
        if draw(st.booleans()):
            block[field] = draw(choice_of(list(values)))
    if draw(st.booleans()):
        dlow = draw(st.floats(0, 0.5))
        dropout = {"low": dlow, "high": draw(st.floats(dlow, 0.9))}
        if finite_only:
            dropout["step"] = 0.1
        block["dropout"] = dropout
    elif draw(st.booleans()):
        block["dropout"] = {"choices": draw(st.lists(st.floats(0, 0.9), min_size=1, max_size=3, unique=True))}
    return {"type": "macro", "blocks": {"low": low, "high": draw(st.integers(low, 4))}, "block": block}


@st.composite
def cell_spaces(draw):
    """Cell spaces small enough for MAX_PARAMETERS, with the fields the spec defaults left out at random."""
    space: dict = {"type": "cell"}
    if draw(st.booleans()):
        space["nodes"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        space["operations"] = draw(choice_of(list(CELL_OPERATIONS)))
    low = 1  # the default cells.low
    if draw(st.booleans()):
        low = draw(st.integers(1, 2))
        space["cells"] = {"low": low, "high": draw(st.integers(low, 3))}
    if draw(st.booleans()):
        space["width"] = draw(choice_of([4, 8, 16]))
    if draw(st.booleans()):
        space["reductions"] = draw(st.integers(0, low))
    return space


@st.composite
def valid_documents(draw):
    multi = draw(st.booleans())
    if multi:
        metrics = draw(st.lists(st.sampled_from(sorted(METRICS)), min_size=2, max_size=4, unique=True))
        objective = [
            {"metric": m, **draw(st.sampled_from([{}, {"direction": "maximize"}, {"direction": "minimize"}]))}
            for m in metrics
        ]
        sampler = draw(st.sampled_from(["random", "grid", "tpe", "gp", "nsga2", "qmc"]))
        pruner = {"name": "none"}
    else:
        metric = draw(st.sampled_from(sorted(METRICS)))
        objective = draw(
            st.sampled_from([{"metric": metric}, [{"metric": metric}], {"metric": metric, "direction": "minimize"}])
        )
        sampler = draw(st.sampled_from(["random", "grid", "tpe", "gp", "cmaes", "nsga2", "qmc", "evolution", "rl"]))
        pruner = {"name": draw(st.sampled_from(PRUNERS))}
    epochs = draw(st.integers(1, 50))
    if pruner["name"] != "none":
        pruner["minResource"] = draw(st.integers(1, epochs))
        pruner["reductionFactor"] = draw(st.integers(2, 5))
    finite_only = sampler == "grid"
    budget = {
        "maxTrials": draw(st.integers(1, 100_000)),
        "parallelTrials": draw(st.integers(1, 1_000)),
        "trialsPerSegment": draw(st.integers(1, 500)),
        "maxSegments": draw(st.integers(1, 10_000)),
    }
    if draw(st.booleans()):
        hours, minutes, seconds = draw(st.tuples(st.integers(0, 5), st.integers(0, 59), st.integers(1, 59)))
        budget["maxDuration"] = draw(
            st.sampled_from([f"{hours}h{minutes}m{seconds}s", f"{minutes + 1}m", f"{seconds}s"])
        )
    if not multi and draw(st.booleans()):
        budget["targetValue"] = draw(st.floats(-1e6, 1e6))
        budget["patience"] = draw(st.integers(1, 1_000))
    source = draw(
        st.sampled_from(
            [
                "builtin:digits",
                "builtin:mnist1d",
                "file:///data/x.npz",
                "s3://bucket/k.csv",
                "https://example.com/x.csv",
            ]
        )
    )
    data = {
        "source": source,
        "validationFraction": draw(st.floats(0.05, 0.45)),
        "testFraction": draw(st.floats(0.0, 0.44)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }
    if source.startswith("https") or draw(st.booleans()):
        data["sha256"] = draw(sha256s)
    document = {
        "apiVersion": "kubetune/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": draw(names)},
        "spec": {
            "data": data,
            "objective": objective,
            "parameters": draw(parameters(finite_only=finite_only)),
            "strategy": {
                "sampler": {"name": sampler, "seed": draw(st.one_of(st.none(), st.integers(0, 2**32 - 1)))},
                "pruner": pruner,
            },
            "budget": budget,
            "trial": {
                "epochs": epochs,
                "batchSize": draw(st.integers(1, 65_536)),
                "retries": draw(st.integers(0, 10)),
                "heartbeatSeconds": draw(st.integers(5, 3_600)),
                "trialsPerPod": draw(st.integers(1, 100)),
                "resources": {
                    "cpu": draw(st.sampled_from(["1", "500m", "2.5", 4])),
                    "memory": draw(st.sampled_from(["512Mi", "2Gi", "1G"])),
                    "gpu": draw(st.integers(0, 16)),
                },
            },
            "registry": {"alias": draw(aliases)},
        },
    }
    if draw(st.booleans()):
        document["spec"]["architecture"] = draw(
            st.one_of(architectures(finite_only=finite_only), cell_spaces()) if not finite_only else cell_spaces()
        )
    if document["spec"].get("architecture", {}).get("type") == "cell" and not finite_only:
        strategy = document["spec"]["strategy"]
        supernet = draw(st.sampled_from([None, "oneShot"] if multi else [None, "oneShot", "darts"]))
        if supernet == "oneShot":
            strategy["oneShot"] = {
                "topK": draw(st.integers(1, min(budget["maxTrials"], 1_000))),
                "candidates": draw(st.integers(1, 100_000)),
                "epochs": draw(st.integers(1, 1_000)),
            }
        elif supernet == "darts":
            strategy["sampler"].update(name="darts", epochs=draw(st.integers(1, 1_000)))
            if draw(st.booleans()):
                strategy["sampler"]["searches"] = draw(st.integers(1, 100))
    seeds, baseline = draw(st.integers(1, 20)), draw(st.sampled_from(["none", "random"]))
    suffix = ("-baseline-random" if baseline == "random" else "") + (f"-seed-{seeds}" if seeds > 1 else "")
    if len(document["metadata"]["name"]) + len(suffix) <= 63:  # sibling study names must fit too
        document["spec"]["strategy"].update(seeds=seeds, baseline=baseline)
    if finite_only:
        unsampled = copy.deepcopy(document)
        unsampled["spec"]["strategy"]["sampler"]["name"] = "random"
        if grid_points(parse_experiment(unsampled).spec) > MAX_GRID_POINTS:  # refused: see test_spec
            document["spec"]["strategy"]["sampler"]["name"] = "random"
    return document


def _within(value, param: dict) -> bool:
    if param["type"] == "categorical":
        return value in param["choices"]
    return param["low"] - 1e-9 <= value <= param["high"] + 1e-9


@SETTINGS
@given(valid_documents())
def test_valid_specs_load_round_trip_and_sample(document):
    experiment = parse_experiment(copy.deepcopy(document))
    assert experiment.name == document["metadata"]["name"]
    assert parse_experiment(experiment.to_dict()) == experiment
    assert parse_experiment(json.loads(experiment.to_json())) == experiment
    assert len(experiment.spec.directions) == len(experiment.spec.objectives)

    study = optuna.create_study(
        storage=InMemoryStorage(), directions=experiment.spec.directions, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    chosen, architecture = sample(study.ask(), experiment.spec)
    parameters = document["spec"]["parameters"]
    for name, param in parameters.items():
        enabled = all(chosen.get(p) in values for p, values in param.get("when", {}).items())
        assert (name in chosen) == enabled
        if enabled:
            assert _within(chosen[name], param)
    space = document["spec"].get("architecture")
    if space is not None and space["type"] == "cell":
        _assert_in_cell_space(architecture, experiment.spec.architecture)
    elif space is not None:
        blocks = space["blocks"]
        assert blocks["low"] <= len(architecture["blocks"]) <= blocks["high"]
        assert all(("kernelSize" in b) == (b["kind"] == "conv") for b in architecture["blocks"])
    else:
        assert architecture is None
    if experiment.spec.strategy.sampler.name == "grid":
        for name, values in grid_space(experiment.spec).items():
            if name in parameters:
                assert values and all(_within(v, parameters[name]) for v in values)


def _assert_in_cell_space(architecture: dict, space) -> None:
    """A sampled cell is valid, inside the parsed space (defaults filled in), and survives its encoding."""
    assert cell_model.validate(architecture) == architecture
    assert architecture["nodes"] == space.nodes
    assert all(op in space.operations.choices for operations in architecture["edges"] for op in operations)
    assert space.cells.low <= architecture["cells"] <= space.cells.high
    assert architecture["width"] in space.width.choices
    assert decode(encode(architecture)) == architecture


@SETTINGS
@given(valid_documents(), st.integers(1, 100_000), st.integers(1, 500), st.sampled_from(["1s", "3h", None]))
def test_budget_never_changes_the_fingerprint(document, max_trials, per_segment, duration):
    before = parse_experiment(copy.deepcopy(document)).search_space_fingerprint()
    budget = document["spec"]["budget"]
    budget.update(maxTrials=max_trials, trialsPerSegment=per_segment, maxDuration=duration)
    if "oneShot" in document["spec"]["strategy"]:  # topK may not exceed maxTrials
        one_shot = document["spec"]["strategy"]["oneShot"]
        one_shot["topK"] = min(one_shot["topK"], max_trials)
    assert parse_experiment(document).search_space_fingerprint() == before
