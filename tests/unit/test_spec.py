"""kubetune.spec: every validation rule rejects a bad spec with a message naming the field and the value."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pydantic
import pytest
import yaml

from kubetune.errors import UserError
from kubetune.spec import (
    API_VERSION,
    Experiment,
    SpecError,
    load_experiment,
    parse_duration,
    parse_experiment,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
DELETE = object()
SHA = "a" * 64
MULTI = [{"metric": "val_accuracy", "direction": "maximize"}, {"metric": "params", "direction": "minimize"}]


def _set(document: dict, path: str, value) -> dict:
    """Set (or with DELETE remove) the value at a dotted path such as ``spec.budget.maxTrials``."""
    *parents, last = path.split(".")
    node = document
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return document


def _apply(document: dict, changes: dict) -> dict:
    document = copy.deepcopy(document)
    for path, value in changes.items():
        _set(document, path, value)
    return document


def _error(document: dict, changes: dict) -> str:
    with pytest.raises(SpecError) as caught:
        parse_experiment(_apply(document, changes))
    return str(caught.value)


# (id, changes applied to examples/digits.yaml, strings the message must contain)
REJECTED = [
    # metadata
    ("name-uppercase", {"metadata.name": "Digits_CNN"}, ["metadata.name", "DNS-1123", "'Digits_CNN'"]),
    ("name-leading-dash", {"metadata.name": "-digits"}, ["metadata.name", "DNS-1123", "'-digits'"]),
    ("name-trailing-dash", {"metadata.name": "digits-"}, ["metadata.name", "'digits-'"]),
    ("name-dot", {"metadata.name": "digits.cnn"}, ["metadata.name", "'digits.cnn'"]),
    ("name-too-long", {"metadata.name": "a" * 64}, ["metadata.name", "at most 63"]),
    ("name-empty", {"metadata.name": ""}, ["metadata.name", "at least 1"]),
    ("name-missing", {"metadata.name": DELETE}, ["metadata.name", "Field required", "add it"]),
    ("api-version", {"apiVersion": "kubetune/v2"}, ["apiVersion", "kubetune/v1alpha1", "kubetune/v2"]),
    ("kind", {"kind": "Study"}, ["kind", "Experiment", "Study"]),
    ("spec-missing", {"spec": DELETE}, ["spec", "Field required"]),
    # unknown fields (a typo must not be ignored), including capitalised ones
    ("unknown-budget-field", {"spec.budget.maxTrails": 5}, ["spec.budget.maxTrails", "unknown field"]),
    ("unknown-capitalised", {"spec.MaxTrials": 5}, ["spec.MaxTrials", "unknown field"]),
    ("unknown-top-level", {"status": {}}, ["status", "unknown field"]),
    ("unknown-in-param", {"spec.parameters.lr.float": 1}, ["spec.parameters.lr.float", "unknown field"]),
    (
        "unknown-in-block",
        {"spec.architecture.block.depth": {"choices": [1]}},
        ["spec.architecture.block.depth", "unknown field"],
    ),
    # data
    (
        "source-scheme",
        {"spec.data.source": "ftp://host/data.csv"},
        ["spec.data.source", "builtin:", "s3:", "'ftp://host/data.csv'"],
    ),
    ("source-no-scheme", {"spec.data.source": "/tmp/data.npz"}, ["spec.data.source", "'/tmp/data.npz'"]),
    (
        "builtin-name",
        {"spec.data.source": "builtin:cifar10"},
        ["spec.data.source", "builtin:digits", "builtin:mnist1d", "'builtin:cifar10'"],
    ),
    (
        "credentials-userinfo",
        {"spec.data.source": "https://alice:hunter2@example.com/d.csv", "spec.data.sha256": SHA},
        ["spec.data.source", "must not carry credentials", "AWS_ACCESS_KEY_ID"],
    ),
    (
        "credentials-user-only",
        {"spec.data.source": "https://tok3n@example.com/d.csv", "spec.data.sha256": SHA},
        ["spec.data.source", "must not carry credentials"],
    ),
    (
        "credentials-s3-signed",
        {"spec.data.source": "s3://bucket/d.csv?X-Amz-Signature=abc&X-Amz-Credential=AKIA"},
        ["spec.data.source", "must not carry credentials"],
    ),
    (
        "credentials-token",
        {"spec.data.source": "https://example.com/d.csv?token=xyz", "spec.data.sha256": SHA},
        ["spec.data.source", "must not carry credentials"],
    ),
    (
        "credentials-gcs-signed",
        {"spec.data.source": "https://storage.example.com/d.csv?X-Goog-Signature=abc", "spec.data.sha256": SHA},
        ["spec.data.source", "must not carry credentials"],
    ),
    (
        "https-needs-sha256",
        {"spec.data.source": "https://example.com/d.csv"},
        ["spec.data.sha256", "required for an https:// source"],
    ),
    ("http-needs-sha256", {"spec.data.source": "http://example.com/d.csv"}, ["spec.data.sha256", "required"]),
    ("sha256-uppercase", {"spec.data.sha256": "A" * 64}, ["spec.data.sha256", "[0-9a-f]{64}", "A" * 64]),
    ("sha256-short", {"spec.data.sha256": "abc"}, ["spec.data.sha256", '"abc"']),
    (
        "fraction-sum",
        {"spec.data.validationFraction": 0.5, "spec.data.testFraction": 0.45},
        ["spec.data", "validationFraction + testFraction", "10%", "0.5 + 0.45"],
    ),
    (
        "validation-fraction-zero",
        {"spec.data.validationFraction": 0.0},
        ["spec.data.validationFraction", "greater than 0"],
    ),
    ("test-fraction-one", {"spec.data.testFraction": 1.0}, ["spec.data.testFraction", "less than 1"]),
    ("data-seed-negative", {"spec.data.seed": -1}, ["spec.data.seed", "-1"]),
    ("data-seed-huge", {"spec.data.seed": 2**32}, ["spec.data.seed", "4294967295"]),
    # objective
    (
        "metric-unknown",
        {"spec.objective.metric": "accuracy"},
        ["spec.objective[0].metric", "val_accuracy", "'accuracy'"],
    ),
    (
        "direction-unknown",
        {"spec.objective.direction": "up"},
        ["spec.objective[0].direction", "'maximize' or 'minimize'", "up"],
    ),
    ("metric-missing", {"spec.objective": {"direction": "maximize"}}, ["spec.objective[0].metric", "add it"]),
    ("objective-empty", {"spec.objective": []}, ["spec.objective", "at least 1"]),
    (
        "metric-duplicate",
        {
            "spec.objective": [{"metric": "val_accuracy"}, {"metric": "val_accuracy", "direction": "minimize"}],
            "spec.strategy.pruner": {"name": "none"},
        },
        ["spec.objective", "unique", "['val_accuracy', 'val_accuracy']"],
    ),
    (
        "metric-in-list",
        {"spec.objective": [{"metric": "val_accuracy"}, {"metric": "loss"}], "spec.strategy.pruner": {"name": "none"}},
        ["spec.objective[1].metric", "'loss'"],
    ),
    # parameters
    (
        "float-low-above-high",
        {"spec.parameters.lr": {"type": "float", "low": 0.1, "high": 0.01}},
        ["spec.parameters.lr", "low must be at most high", "low=0.1, high=0.01"],
    ),
    (
        "int-low-above-high",
        {"spec.parameters.batchSize": {"type": "int", "low": 128, "high": 32}},
        ["spec.parameters.batchSize", "low must be at most high", "low=128, high=32"],
    ),
    (
        "log-low-zero",
        {"spec.parameters.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}},
        ["spec.parameters.lr", "log=true needs low > 0", "low=0.0"],
    ),
    (
        "log-low-negative-int",
        {"spec.parameters.batchSize": {"type": "int", "low": -4, "high": 8, "log": True}},
        ["spec.parameters.batchSize", "log=true needs low > 0", "low=-4"],
    ),
    (
        "log-with-step",
        {"spec.parameters.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True, "step": 0.01}},
        ["spec.parameters.lr", "log and step cannot be used together"],
    ),
    (
        "step-zero",
        {"spec.parameters.lr": {"type": "float", "low": 0.01, "high": 0.1, "step": 0}},
        ["spec.parameters.lr.step", "greater than 0"],
    ),
    (
        "int-step-zero",
        {"spec.parameters.batchSize": {"type": "int", "low": 16, "high": 64, "step": 0}},
        ["spec.parameters.batchSize.step", "greater than or equal to 1"],
    ),
    (
        "float-infinite",
        {"spec.parameters.lr": {"type": "float", "low": 0.0, "high": float("inf")}},
        ["spec.parameters.lr.high", "finite"],
    ),
    (
        "float-nan",
        {"spec.parameters.lr": {"type": "float", "low": float("nan"), "high": 1.0}},
        ["spec.parameters.lr.low", "finite"],
    ),
    ("float-not-a-number", {"spec.parameters.lr.low": "small"}, ["spec.parameters.lr.low", "valid number", "small"]),
    ("bound-missing", {"spec.parameters.lr.high": DELETE}, ["spec.parameters.lr.high", "add it"]),
    (
        "type-unknown",
        {"spec.parameters.lr.type": "double"},
        ["spec.parameters.lr", "'double'", "'float', 'int', 'categorical'"],
    ),
    ("type-missing", {"spec.parameters.lr.type": DELETE}, ["spec.parameters.lr", "discriminator 'type'"]),
    (
        "categorical-empty",
        {"spec.parameters.batchSize.choices": []},
        ["spec.parameters.batchSize.choices", "at least 1 item"],
    ),
    (
        "categorical-duplicate",
        {"spec.parameters.batchSize.choices": [32, 64, 32]},
        ["spec.parameters.batchSize.choices", "unique", "[32, 64, 32]"],
    ),
    (
        "categorical-equal-number-and-bool",
        {"spec.parameters.batchSize.choices": [1, True]},
        ["spec.parameters.batchSize.choices", "unique"],
    ),
    (
        "categorical-equal-int-and-float",
        {"spec.parameters.batchSize.choices": [64, 64.0]},
        ["spec.parameters.batchSize.choices", "unique"],
    ),
    ("categorical-nested", {"spec.parameters.batchSize.choices": [[32]]}, ["spec.parameters.batchSize.choices[0]"]),
    (
        "unknown-hyperparameter",
        {"spec.parameters.learningRate": {"type": "float", "low": 0.1, "high": 1.0}},
        ["spec.parameters.learningRate", "'learningRate'", "not a hyperparameter", "lr, optimizer"],
    ),
    (
        "optimizer-unknown-choice",
        {"spec.parameters.optimizer.choices": ["adam", "lbfgs"]},
        ["spec.parameters.optimizer", "['adam', 'adamw', 'sgd', 'rmsprop']", "['lbfgs']"],
    ),
    (
        "optimizer-not-categorical",
        {
            "spec.parameters.optimizer": {"type": "float", "low": 0.0, "high": 1.0},
            "spec.parameters.momentum.when": DELETE,
        },
        ["spec.parameters.optimizer", "must be categorical"],
    ),
    # every value a trial can get is one the trainer accepts
    (
        "lr-categorical-text",
        {"spec.parameters.lr": {"type": "categorical", "choices": [0.01, "0.1"]}},
        ["spec.parameters.lr", "choices must each be a number in (0, inf)", "['0.1']"],
    ),
    (
        "lr-low-zero",
        {"spec.parameters.lr": {"type": "float", "low": 0.0, "high": 0.1}},
        ["spec.parameters.lr", "a number in (0, inf)", "low=0.0"],
    ),
    (
        "batch-size-zero",
        {"spec.parameters.batchSize.choices": [0, 32]},
        ["spec.parameters.batchSize", "an integer in [1, 65536]", "but got [0]"],
    ),
    (
        "batch-size-text-and-fraction",
        {"spec.parameters.batchSize.choices": [32, "64", 128.5, True]},
        ["spec.parameters.batchSize", "an integer in [1, 65536]", "['64', 128.5, True]"],
    ),
    (
        "batch-size-int-from-zero",
        {"spec.parameters.batchSize": {"type": "int", "low": 0, "high": 64}},
        ["spec.parameters.batchSize", "low=0"],
    ),
    (
        "batch-size-int-huge",
        {"spec.parameters.batchSize": {"type": "int", "low": 32, "high": 100_000}},
        ["spec.parameters.batchSize", "high=100000"],
    ),
    (
        "batch-size-float",
        {"spec.parameters.batchSize": {"type": "float", "low": 16, "high": 64}},
        ["spec.parameters.batchSize", "takes integers", "type int or categorical"],
    ),
    ("momentum-one", {"spec.parameters.momentum.high": 1.0}, ["spec.parameters.momentum", "[0, 1)", "high=1.0"]),
    (
        "weight-decay-negative",
        {"spec.parameters.weightDecay": {"type": "float", "low": -0.1, "high": 0.1}},
        ["spec.parameters.weightDecay", "[0, inf)", "low=-0.1"],
    ),
    (
        "label-smoothing-one",
        {"spec.parameters.labelSmoothing": {"type": "categorical", "choices": [0.0, 1.0]}},
        ["spec.parameters.labelSmoothing", "[0, 1)", "but got [1.0]"],
    ),
    # conditions
    (
        "when-unknown-parent",
        {"spec.parameters.momentum.when": {"solver": ["sgd"]}},
        ["spec.parameters.momentum.when.solver", "'solver'", "another categorical parameter"],
    ),
    (
        "when-self",
        {"spec.parameters.momentum.when": {"momentum": [0.5]}},
        ["spec.parameters.momentum.when.momentum", "another categorical parameter"],
    ),
    (
        "when-cycle",
        {
            "spec.parameters": {
                "optimizer": {"type": "categorical", "choices": ["adam", "sgd"], "when": {"batchSize": [32]}},
                "batchSize": {"type": "categorical", "choices": [32, 64], "when": {"optimizer": ["sgd"]}},
            }
        },
        ["spec.parameters", "cycle"],
    ),
    (
        "when-non-categorical-parent",
        {"spec.parameters.momentum.when": {"lr": [0.01]}},
        ["spec.parameters.momentum.when.lr", "categorical"],
    ),
    (
        "when-value-not-a-choice",
        {"spec.parameters.momentum.when": {"optimizer": ["sgd", "rmsprop"]}},
        ["spec.parameters.momentum.when.optimizer", "['adam', 'adamw', 'sgd']", "['rmsprop']"],
    ),
    # architecture
    (
        "block-kind",
        {"spec.architecture.block.kind.choices": ["conv", "rnn"]},
        ["spec.architecture.block.kind", "['conv', 'mlp']", "['rnn']"],
    ),
    (
        "block-activation",
        {"spec.architecture.block.activation.choices": ["swish"]},
        ["spec.architecture.block.activation", "relu", "['swish']"],
    ),
    (
        "block-norm",
        {"spec.architecture.block.norm.choices": ["group"]},
        ["spec.architecture.block.norm", "['none', 'batch', 'layer']", "['group']"],
    ),
    (
        "block-width-zero",
        {"spec.architecture.block.width.choices": [16, 0]},
        ["spec.architecture.block.width", "integers from 1 to", "[0]"],
    ),
    (
        "block-width-text",
        {"spec.architecture.block.width.choices": ["wide"]},
        ["spec.architecture.block.width", "integers from 1 to", "['wide']"],
    ),
    (
        "block-width-bool",
        {"spec.architecture.block.width.choices": [True]},
        ["spec.architecture.block.width", "integers from 1 to", "[True]"],
    ),
    (
        "block-width-float",
        {"spec.architecture.block.width.choices": [16.5]},
        ["spec.architecture.block.width", "[16.5]"],
    ),
    (
        "block-kernel-size",
        {"spec.architecture.block.kernelSize.choices": [3, -5]},
        ["spec.architecture.block.kernelSize", "integers from 1 to", "[-5]"],
    ),
    (
        "block-skip",
        {"spec.architecture.block.skip.choices": ["yes"]},
        ["spec.architecture.block.skip", "true/false", "['yes']"],
    ),
    (
        "block-dropout-choice",
        {"spec.architecture.block.dropout": {"choices": [0.1, 1.0]}},
        ["spec.architecture.block.dropout", "[0, 1)", "[0.1, 1.0]"],
    ),
    (
        "block-dropout-range",
        {"spec.architecture.block.dropout": {"low": 0.0, "high": 1.5}},
        ["spec.architecture.block.dropout", "[0, 1)", "[0.0, 1.5]"],
    ),
    (
        "block-dropout-inverted",
        {"spec.architecture.block.dropout": {"low": 0.4, "high": 0.1}},
        ["spec.architecture.block.dropout", "low must be at most high", "low=0.4, high=0.1"],
    ),
    (
        "block-choices-empty",
        {"spec.architecture.block.width.choices": []},
        ["spec.architecture.block.width.choices", "at least 1 item"],
    ),
    (
        "block-width-huge",
        {"spec.architecture.block.width.choices": [16, 100_000]},
        ["spec.architecture.block.width", "integers from 1 to 4096", "[100000]"],
    ),
    (
        "block-kernel-size-huge",
        {"spec.architecture.block.kernelSize.choices": [3, 65]},
        ["spec.architecture.block.kernelSize", "integers from 1 to 64", "[65]"],
    ),
    (
        "architecture-too-many-parameters",
        {"spec.architecture.blocks": {"low": 1, "high": 32}, "spec.architecture.block.width.choices": [16, 4096]},
        [
            "spec.architecture:",
            f"about {32 * 4096 * (4096 * 5**2 + 3) * 2:,} parameters",
            "parameters (32 blocks of width 4096, kernel 5)",
            "100,000,000",
            "lower block.width, block.kernelSize or blocks.high",
        ],
    ),
    (
        "blocks-low-zero",
        {"spec.architecture.blocks.low": 0},
        ["spec.architecture.blocks.low", "greater than or equal to 1"],
    ),
    (
        "blocks-high-huge",
        {"spec.architecture.blocks.high": 33},
        ["spec.architecture.blocks.high", "less than or equal to 32"],
    ),
    (
        "blocks-inverted",
        {"spec.architecture.blocks": {"low": 3, "high": 2}},
        ["spec.architecture.blocks", "low must be at most high", "low=3, high=2"],
    ),
    ("architecture-type", {"spec.architecture.type": "micro"}, ["spec.architecture.type", "'macro'", "micro"]),
    # strategy
    ("sampler-unknown", {"spec.strategy.sampler.name": "bayes"}, ["spec.strategy.sampler.name", "tpe", "'bayes'"]),
    ("sampler-seed-negative", {"spec.strategy.sampler.seed": -1}, ["spec.strategy.sampler.seed", "-1"]),
    ("sampler-seed-huge", {"spec.strategy.sampler.seed": 2**32}, ["spec.strategy.sampler.seed", "4294967295"]),
    (
        "population-without-evolution",
        {"spec.strategy.sampler.population": 10},
        ["spec.strategy.sampler.population", "evolution only", "'tpe'"],
    ),
    (
        "tournament-over-population",
        {"spec.strategy.sampler": {"name": "evolution", "population": 4, "tournament": 5}},
        ["spec.strategy.sampler.tournament", "population (4)", "5"],
    ),
    ("population-tiny", {"spec.strategy.sampler": {"name": "evolution", "population": 1}}, ["population", "2"]),
    (
        "inherit-weights-without-evolution",
        {"spec.strategy.inheritWeights": True},
        ["spec.strategy.inheritWeights", "sampler evolution", "'tpe'"],
    ),
    (
        "inherit-weights-without-architecture",
        {"spec.strategy": {"sampler": {"name": "evolution"}, "inheritWeights": True}, "spec.architecture": DELETE},
        ["spec.strategy.inheritWeights", "architecture space"],
    ),
    (
        "pruner-unknown",
        {"spec.strategy.pruner.name": "percentile"},
        ["spec.strategy.pruner.name", "hyperband", "'percentile'"],
    ),
    (
        "threshold-without-curve",
        {"spec.strategy.pruner.threshold": 0.1},
        ["spec.strategy.pruner.threshold", "pruner curve only", "'hyperband'"],
    ),
    (
        "curve-threshold-one",
        {"spec.strategy.pruner": {"name": "curve", "threshold": 1.0}},
        ["spec.strategy.pruner.threshold", "less than 1", "1.0"],
    ),
    (
        "curve-threshold-zero",
        {"spec.strategy.pruner": {"name": "curve", "threshold": 0}},
        ["spec.strategy.pruner.threshold", "greater than 0", "0"],
    ),
    (
        "pruner-reduction-factor",
        {"spec.strategy.pruner.reductionFactor": 1},
        ["spec.strategy.pruner.reductionFactor", "greater than or equal to 2"],
    ),
    (
        "multi-objective-cmaes",
        {"spec.objective": MULTI, "spec.strategy": {"sampler": {"name": "cmaes"}}},
        ["spec.strategy.sampler.name", "'cmaes'", "one objective"],
    ),
    (
        "multi-objective-history",
        {"spec.objective": MULTI, "spec.strategy": {"sampler": {"name": "tpe", "history": 100}}},
        ["spec.strategy.sampler.history", "single objective", "100", "2 objectives"],
    ),
    (
        "history-without-tpe",
        {"spec.strategy.sampler": {"name": "random", "history": 100}},
        ["spec.strategy.sampler.history", "tpe only", "'random'"],
    ),
    ("history-tiny", {"spec.strategy.sampler.history": 49}, ["spec.strategy.sampler.history", "50", "49"]),
    ("history-huge", {"spec.strategy.sampler.history": 100_001}, ["spec.strategy.sampler.history", "100000"]),
    (
        "multi-objective-pruner",
        {"spec.objective": MULTI},
        ["spec.strategy.pruner.name", "'hyperband'", "single objective"],
    ),
    (
        "multi-objective-target",
        {"spec.objective": MULTI, "spec.strategy.pruner": {"name": "none"}, "spec.budget.targetValue": 0.9},
        ["spec.budget.targetValue", "single objective"],
    ),
    (
        "multi-objective-patience",
        {"spec.objective": MULTI, "spec.strategy.pruner": {"name": "none"}, "spec.budget.patience": 3},
        ["spec.budget.patience", "single objective"],
    ),
    (
        "pruner-min-resource",
        {"spec.strategy.pruner.minResource": 12},
        ["spec.strategy.pruner.minResource", "trial.epochs (10)", "but got 12"],
    ),
    (
        "grid-float-without-step",
        {"spec.strategy.sampler.name": "grid", "spec.architecture.block.dropout": {"choices": [0.0]}},
        ["spec.parameters.lr", "grid needs a finite space"],
    ),
    (
        "grid-dropout-range",
        {
            "spec.strategy.sampler.name": "grid",
            "spec.parameters": {"optimizer": {"type": "categorical", "choices": ["adam"]}},
        },
        ["spec.architecture.block.dropout", "grid needs a finite space"],
    ),
    (
        "grid-too-many-points",
        {
            "spec.strategy.sampler.name": "grid",
            "spec.parameters.lr": {"type": "float", "low": 0.01, "high": 0.03, "step": 0.01},
            "spec.parameters.momentum.step": 0.1,
            "spec.architecture.block.dropout.step": 0.1,
        },
        [
            "spec.strategy.sampler.name",
            "grid over this space has",
            " points, more than the 100,000",
            "use tpe or random",
        ],
    ),
    # budget
    (
        "max-trials-zero",
        {"spec.budget.maxTrials": 0},
        ["spec.budget.maxTrials", "greater than or equal to 1", "(got 0)"],
    ),
    ("max-trials-negative", {"spec.budget.maxTrials": -3}, ["spec.budget.maxTrials", "-3"]),
    ("max-trials-huge", {"spec.budget.maxTrials": 10**9}, ["spec.budget.maxTrials", "less than or equal to 1000000"]),
    ("max-trials-text", {"spec.budget.maxTrials": "many"}, ["spec.budget.maxTrials", "valid integer", "many"]),
    ("parallel-trials-zero", {"spec.budget.parallelTrials": 0}, ["spec.budget.parallelTrials", "(got 0)"]),
    ("trials-per-segment-negative", {"spec.budget.trialsPerSegment": -1}, ["spec.budget.trialsPerSegment", "-1"]),
    ("max-segments-zero", {"spec.budget.maxSegments": 0}, ["spec.budget.maxSegments", "(got 0)"]),
    ("patience-zero", {"spec.budget.patience": 0}, ["spec.budget.patience", "(got 0)"]),
    (
        "max-duration-format",
        {"spec.budget.maxDuration": "10 minutes"},
        ["spec.budget.maxDuration", "duration such as 90s, 10m or 1h30m", "'10 minutes'"],
    ),
    ("max-duration-days", {"spec.budget.maxDuration": "1d"}, ["spec.budget.maxDuration", "'1d'"]),
    ("max-duration-zero", {"spec.budget.maxDuration": "0s"}, ["spec.budget.maxDuration", "at least 1s", "'0s'"]),
    ("max-duration-empty", {"spec.budget.maxDuration": ""}, ["spec.budget.maxDuration", "''"]),
    ("target-value-infinite", {"spec.budget.targetValue": float("inf")}, ["spec.budget.targetValue", "finite"]),
    # trial
    (
        "epochs-zero",
        {"spec.trial.epochs": 0, "spec.strategy.pruner": {"name": "none"}},
        ["spec.trial.epochs", "(got 0)"],
    ),
    (
        "heartbeat-too-short",
        {"spec.trial.heartbeatSeconds": 1},
        ["spec.trial.heartbeatSeconds", "greater than or equal to 5"],
    ),
    ("retries-negative", {"spec.trial.retries": -1}, ["spec.trial.retries", "-1"]),
    ("cpu-quantity", {"spec.trial.resources.cpu": "two"}, ["spec.trial.resources.cpu", "Kubernetes quantity", "'two'"]),
    ("memory-quantity", {"spec.trial.resources.memory": "4GB"}, ["spec.trial.resources.memory", "'4GB'"]),
    ("memory-negative", {"spec.trial.resources.memory": "-1Gi"}, ["spec.trial.resources.memory", "'-1Gi'"]),
    ("gpu-negative", {"spec.trial.resources.gpu": -1}, ["spec.trial.resources.gpu", "greater than or equal to 0"]),
    ("gpu-too-many", {"spec.trial.resources.gpu": 17}, ["spec.trial.resources.gpu", "less than or equal to 16"]),
    (
        "toleration-operator",
        {"spec.trial.tolerations": [{"key": "gpu", "operator": "In", "value": "a"}]},
        ["spec.trial.tolerations[0].operator", "'Exists' or 'Equal'", "In"],
    ),
    (
        "toleration-effect",
        {"spec.trial.tolerations": [{"key": "gpu", "operator": "Exists"}, {"effect": "Evict"}]},
        ["spec.trial.tolerations[1].effect", "NoSchedule", "Evict"],
    ),
    (
        "node-selector-value",
        {"spec.trial.nodeSelector": {"Kubernetes.io/Arch": 1}},
        ["spec.trial.nodeSelector.Kubernetes.io/Arch", "valid string"],
    ),
    # registry
    ("alias-leading-digit", {"spec.registry.alias": "1st"}, ["spec.registry.alias", "[A-Za-z_]", "1st"]),
    ("alias-punctuation", {"spec.registry.alias": "champion!"}, ["spec.registry.alias", "champion!"]),
    ("model-name-empty", {"spec.registry.modelName": ""}, ["spec.registry.modelName", "at least 1"]),
    (
        "model-name-slash",
        {"spec.registry.modelName": "team/digits"},
        ["spec.registry.modelName", "letters, digits, '.', '_' and '-'", "'team/digits'"],
    ),
    ("model-name-colon", {"spec.registry.modelName": "team:digits"}, ["spec.registry.modelName", "'team:digits'"]),
    ("model-name-quote", {"spec.registry.modelName": "o'brien"}, ["spec.registry.modelName", "o'brien"]),
    ("model-name-dots", {"spec.registry.modelName": ".."}, ["spec.registry.modelName", "'..'"]),
    ("model-name-space", {"spec.registry.modelName": "digits cnn"}, ["spec.registry.modelName", "'digits cnn'"]),
    ("alias-latest", {"spec.registry.alias": "Latest"}, ["spec.registry.alias", "reserved by MLflow", "'Latest'"]),
    ("alias-version", {"spec.registry.alias": "v2"}, ["spec.registry.alias", "reserved by MLflow", "'v2'"]),
    ("alias-too-long", {"spec.registry.alias": "a" * 256}, ["spec.registry.alias", "at most 255"]),
]


@pytest.mark.parametrize("changes, expected", [pytest.param(c, e, id=i) for i, c, e in REJECTED])
def test_rule_rejects_with_field_path_and_value(digits_spec, changes, expected):
    message = _error(digits_spec, changes)
    assert message.startswith("invalid experiment spec:")
    for text in expected:
        assert text in message, f"{text!r} missing from:\n{message}"


ACCEPTED = [
    (
        "evolution-with-inheritance",
        {"spec.strategy": {"sampler": {"name": "evolution", "population": 8, "tournament": 8}, "inheritWeights": True}},
    ),
    ("rl-sampler", {"spec.strategy.sampler.name": "rl"}),
    ("tpe-history", {"spec.strategy.sampler.history": 50}),
    ("builtin-mnist1d", {"spec.data.source": "builtin:mnist1d"}),
    ("file-source", {"spec.data.source": "file:///data/train.npz"}),
    ("s3-source", {"spec.data.source": "s3://bucket/data.csv"}),
    ("https-with-sha256", {"spec.data.source": "https://example.com/d.csv?version=2", "spec.data.sha256": SHA}),
    ("fractions-leave-exactly-10-percent", {"spec.data.validationFraction": 0.5, "spec.data.testFraction": 0.4}),
    ("fractions-leave-exactly-10-percent-2", {"spec.data.validationFraction": 0.7, "spec.data.testFraction": 0.2}),
    ("test-fraction-zero", {"spec.data.testFraction": 0.0}),
    ("float-low-equals-high", {"spec.parameters.lr": {"type": "float", "low": 0.01, "high": 0.01}}),
    ("int-log", {"spec.parameters.batchSize": {"type": "int", "low": 16, "high": 256, "log": True}}),
    ("batch-size-integral-float", {"spec.parameters.batchSize.choices": [32, 64.0]}),
    (
        "hyperparameters-at-their-bounds",
        {
            "spec.parameters.momentum": {"type": "float", "low": 0.0, "high": 0.999, "when": {"optimizer": ["sgd"]}},
            "spec.parameters.batchSize": {"type": "int", "low": 1, "high": 65_536, "log": True},
            "spec.parameters.weightDecay": {"type": "categorical", "choices": [0, 0.01]},
            "spec.parameters.labelSmoothing": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
        },
    ),
    (
        "widest-allowed-network",
        {
            "spec.architecture.block": {"kind": {"choices": ["mlp"]}, "width": {"choices": [4096]}},
            "spec.architecture.blocks": {"low": 1, "high": 5},
        },
    ),
    ("model-name-dotted", {"spec.registry.modelName": "team.digits_cnn-2"}),
    ("multi-objective-nsga2", {"spec.objective": MULTI, "spec.strategy": {"sampler": {"name": "nsga2"}}}),
    ("pruner-min-resource-equals-epochs", {"spec.strategy.pruner.minResource": 10}),
    ("pruner-none-ignores-min-resource", {"spec.strategy.pruner": {"name": "none", "minResource": 50}}),
    ("pruner-curve", {"spec.strategy.pruner": {"name": "curve", "threshold": 0.2, "minResource": 3}}),
    (
        "grid-finite",
        {
            "spec.strategy.sampler.name": "grid",
            "spec.parameters.lr": {"type": "float", "low": 0.01, "high": 0.03, "step": 0.01},
            "spec.parameters.momentum.step": 0.1,
            "spec.architecture": DELETE,
        },
    ),
    ("duration-compound", {"spec.budget.maxDuration": "1h30m15s"}),
    ("quantities", {"spec.trial.resources": {"cpu": "500m", "memory": "512Mi", "gpu": 16}}),
    ("cpu-as-number", {"spec.trial.resources.cpu": 2}),
    (
        "toleration-exists",
        {"spec.trial.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    ),
    ("alias-underscore", {"spec.registry.alias": "_best-2"}),
    ("seed-null", {"spec.strategy.sampler.seed": None}),
    ("seed-max", {"spec.strategy.sampler.seed": 2**32 - 1, "spec.data.seed": 2**32 - 1}),
    ("no-architecture", {"spec.architecture": DELETE}),
]


@pytest.mark.parametrize("changes", [pytest.param(c, id=i) for i, c in ACCEPTED])
def test_valid_variants_load(digits_spec, changes):
    experiment = parse_experiment(_apply(digits_spec, changes))
    assert isinstance(experiment, Experiment)
    assert parse_experiment(experiment.to_dict()) == experiment


@pytest.mark.parametrize(
    "source",
    [
        "https://alice:hunter2@example.com/d.csv",
        "s3://bucket/d.csv?X-Amz-Signature=hunter2&X-Amz-Credential=hunter2",
        "https://example.com/d.csv?sig=hunter2",
        "ftp://alice:hunter2@example.com/d.csv",  # a bad scheme too: the credentials are still not echoed
    ],
)
def test_credentials_are_not_echoed(digits_spec, source):
    message = _error(digits_spec, {"spec.data.source": source, "spec.data.sha256": SHA})
    assert "spec.data.source" in message and "must not carry credentials" in message
    assert "hunter2" not in message and "***" in message


def test_every_bad_field_is_named(digits_spec):
    message = _error(digits_spec, {"spec.budget.maxTrials": 0, "spec.trial.resources.gpu": 99, "metadata.name": "X"})
    for path in ("spec.budget.maxTrials", "spec.trial.resources.gpu", "metadata.name"):
        assert path in message
    assert len(message.splitlines()) == 4  # the heading and one line per field


def test_spec_error_is_a_user_error():
    assert issubclass(SpecError, UserError) and issubclass(SpecError, ValueError)


@pytest.mark.parametrize("document", [None, [], "experiment", 3])
def test_document_must_be_a_mapping(document):
    with pytest.raises(SpecError, match="must be a mapping but got"):
        parse_experiment(document)


def test_minimal_spec_takes_defaults(minimal_spec):
    experiment = parse_experiment(minimal_spec)
    spec = experiment.spec
    assert experiment.name == experiment.model_name == "unit-test"
    assert spec.directions == ["maximize"] and not spec.is_multi_objective
    assert spec.parameters == {} and spec.architecture is None
    assert (spec.budget.max_trials, spec.budget.max_duration_seconds) == (20, None)
    assert (spec.strategy.sampler.name, spec.strategy.sampler.seed, spec.strategy.pruner.name) == ("tpe", 0, "none")
    assert spec.trial.heartbeat_seconds == 30 and spec.registry.alias == "champion"


def test_single_objective_mapping_equals_one_item_list(minimal_spec):
    as_mapping = parse_experiment(_apply(minimal_spec, {"spec.objective": {"metric": "val_loss"}}))
    as_list = parse_experiment(_apply(minimal_spec, {"spec.objective": [{"metric": "val_loss"}]}))
    assert as_mapping == as_list
    assert as_mapping.spec.directions == ["minimize"]  # the metric's own direction when none is given
    assert [o.metric for o in as_mapping.spec.objectives] == ["val_loss"]


def test_explicit_direction_wins(minimal_spec):
    experiment = parse_experiment(
        _apply(minimal_spec, {"spec.objective": {"metric": "params", "direction": "maximize"}})
    )
    assert experiment.spec.directions == ["maximize"]


def test_multi_objective_directions(minimal_spec):
    experiment = parse_experiment(
        _apply(minimal_spec, {"spec.objective": [{"metric": "val_accuracy"}, {"metric": "params"}]})
    )
    assert experiment.spec.is_multi_objective
    assert experiment.spec.directions == ["maximize", "minimize"]


def test_snake_case_attributes_read_camel_case_keys(digits_spec):
    spec = parse_experiment(digits_spec).spec
    assert spec.budget.trials_per_segment == 10 and spec.budget.parallel_trials == 2
    assert spec.strategy.pruner.min_resource == 2 and spec.data.validation_fraction == 0.2
    assert spec.architecture.block.kernel_size.choices == [3, 5]


def test_model_name_defaults_to_metadata_name(digits_spec):
    assert parse_experiment(_apply(digits_spec, {"spec.registry.modelName": DELETE})).model_name == "digits-cnn"
    assert parse_experiment(_apply(digits_spec, {"spec.registry.modelName": "other"})).model_name == "other"


def test_spec_is_frozen(digits_spec):
    experiment = parse_experiment(digits_spec)
    with pytest.raises(pydantic.ValidationError):
        experiment.spec.budget.max_trials = 3
    assert experiment.spec.budget.max_trials == 20


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1h0m5s", 3605),
        (" 5m ", 300),
        ("0s", 0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", " ", "10", "m", "1d", "-5m", "5m1h", "1.5h", "10 m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="duration such as 90s"):
        parse_duration(text)


def test_max_duration_seconds(digits_spec):
    assert parse_experiment(digits_spec).spec.budget.max_duration_seconds == 600
    assert (
        parse_experiment(_apply(digits_spec, {"spec.budget.maxDuration": "1h1s"})).spec.budget.max_duration_seconds
        == 3601
    )


# loading files


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_load(path):
    experiment = load_experiment(path)
    assert experiment.api_version == API_VERSION
    assert parse_experiment(experiment.to_dict()) == experiment


def test_there_are_examples():
    assert any(p.name == "digits.yaml" for p in EXAMPLES)


def test_digits_example_content():
    experiment = load_experiment(Path(__file__).resolve().parents[2] / "examples" / "digits.yaml")
    assert experiment.name == "digits-cnn"
    assert experiment.spec.parameters["momentum"].when == {"optimizer": ["sgd"]}
    assert (experiment.spec.architecture.blocks.low, experiment.spec.architecture.blocks.high) == (1, 3)


def test_load_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as caught:
        load_experiment(missing)
    assert "cannot read experiment file" in str(caught.value) and str(missing) in str(caught.value)


def test_load_directory(tmp_path):
    with pytest.raises(SpecError, match="cannot read experiment file"):
        load_experiment(tmp_path)


def test_load_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: kubetune/v1alpha1\nspec: {data: [unclosed\n")
    with pytest.raises(SpecError) as caught:
        load_experiment(path)
    assert "not valid YAML" in str(caught.value) and str(path) in str(caught.value)


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(SpecError, match="must be a mapping but got NoneType"):
        load_experiment(path)


def test_load_invalid_spec_names_field(tmp_path, digits_spec):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_apply(digits_spec, {"spec.budget.maxTrials": -3})))
    with pytest.raises(SpecError) as caught:
        load_experiment(str(path))
    assert "spec.budget.maxTrials" in str(caught.value) and "-3" in str(caught.value)


# serialisation and fingerprint


def test_to_dict_round_trip(digits_spec):
    experiment = parse_experiment(digits_spec)
    document = experiment.to_dict()
    assert document["apiVersion"] == API_VERSION and "maxTrials" in document["spec"]["budget"]
    again = parse_experiment(document)
    assert again == experiment
    assert again.to_json() == experiment.to_json()
    assert parse_experiment(yaml.safe_load(yaml.safe_dump(document, sort_keys=False))) == experiment


def test_to_json_round_trip_keeps_parameter_order(digits_spec):
    """Components get the spec as to_json(); `momentum` must still come after `optimizer`, which it refers to."""
    experiment = parse_experiment(digits_spec)
    again = parse_experiment(json.loads(experiment.to_json()))
    assert again == experiment
    assert list(again.spec.parameters) == ["lr", "optimizer", "momentum", "batchSize"]


def test_to_dict_keeps_a_null_seed(digits_spec):
    experiment = parse_experiment(_apply(digits_spec, {"spec.strategy.sampler.seed": None}))
    again = parse_experiment(experiment.to_dict())
    assert again.spec.strategy.sampler.seed is None
    assert again == experiment


def test_to_json_is_canonical(digits_spec):
    shuffled = dict(reversed(list(digits_spec.items())))
    assert parse_experiment(shuffled).to_json() == parse_experiment(digits_spec).to_json()


def _fingerprint(document: dict, changes: dict | None = None) -> str:
    return parse_experiment(_apply(document, changes or {})).search_space_fingerprint()


@pytest.mark.parametrize(
    "changes",
    [
        {"spec.parameters.lr.high": 0.05},
        {"spec.parameters.optimizer.choices": ["adam", "sgd"]},
        {"spec.parameters.batchSize": DELETE},
        {"spec.architecture.blocks.high": 4},
        {"spec.architecture.block.width.choices": [16, 32]},
        {"spec.architecture": DELETE},
        {"spec.objective.metric": "val_loss", "spec.objective.direction": "minimize"},
        {"spec.data.source": "builtin:mnist1d"},
        {"spec.data.seed": 1},
        {"spec.trial.epochs": 12},
        {"spec.trial.batchSize": 32},
    ],
    ids=lambda c: ",".join(c),
)
def test_fingerprint_changes_with_the_space(digits_spec, changes):
    assert _fingerprint(digits_spec, changes) != _fingerprint(digits_spec)


@pytest.mark.parametrize(
    "changes",
    [
        {"spec.budget.maxTrials": 200},
        {"spec.budget.trialsPerSegment": 3, "spec.budget.parallelTrials": 4},
        {"spec.budget.maxDuration": "2h", "spec.budget.patience": 5, "spec.budget.targetValue": 0.99},
        {"spec.strategy.sampler": {"name": "random", "seed": 3}},
        {"spec.trial.resources": {"cpu": "4", "memory": "8Gi", "gpu": 1}},
        {"spec.trial.retries": 3, "spec.trial.heartbeatSeconds": 10},
        {"spec.registry.alias": "best"},
    ],
    ids=lambda c: ",".join(c),
)
def test_fingerprint_ignores_budget_and_operations(digits_spec, changes):
    assert _fingerprint(digits_spec, changes) == _fingerprint(digits_spec)


def test_fingerprint_is_stable(digits_spec):
    first = _fingerprint(digits_spec)
    assert first == _fingerprint(copy.deepcopy(digits_spec))
    assert len(first) == 16 and int(first, 16) >= 0


def test_a_condition_may_refer_to_a_parameter_listed_after_it(digits_spec):
    from kubetune.spec import sampling_order

    data = digits_spec
    parameters = data["spec"]["parameters"]
    data["spec"]["parameters"] = {"momentum": parameters.pop("momentum"), **parameters}
    experiment = parse_experiment(data)
    order = sampling_order(experiment.spec.parameters)
    assert order.index("optimizer") < order.index("momentum")
