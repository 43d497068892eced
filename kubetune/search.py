"""One lane of the search: suggest a trial, then train it against the shared study.

These are the bodies of the suggest and train components; they take and return plain values
(trial numbers, paths, JSON-able dicts) so that they cross KFP component boundaries unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kubetune import encoding, fidelity, grpc_storage, settings, space, suggest_client
from kubetune.segments import run_name
from kubetune.spec import EPOCH_METRICS, Experiment
from kubetune.stop_rules import stop_before_trial
from kubetune.study import (
    ask_tagged,
    beat,
    get_trial,
    heartbeat,
    lane_seed,
    live_trial,
    load_study,
    set_trial_attrs,
)

if TYPE_CHECKING:
    import optuna
    import torch
    from torch import nn

    from kubetune.data import SplitData
    from kubetune.train import TrainResult

__all__ = ["NO_TRIAL", "ask_trial", "record_trial", "suggest_trial", "train_threads", "train_trial"]

NO_TRIAL = -1  # what suggest_trial returns when a stop rule holds; the pipeline trains only numbers >= 0


def suggest_trial(experiment: Experiment, *, segment: int, slot: int) -> int:
    """Ask the study for a trial just in time and record what the trainer needs; returns its number.

    Returns NO_TRIAL instead, asking nothing, when a stop rule already holds (the pipeline then skips
    the lane's training), so a reached target or duration ends the search within the segment. Through
    the storage proxy the proxy's warm process asks (kubetune.suggest_service); otherwise this one does.
    """
    url = settings.storage_url()
    if url.startswith(grpc_storage.SCHEME):
        number, reason = suggest_client.suggest_remotely(url, experiment, segment=segment, slot=slot)
    else:
        study = load_study(experiment, seed_offset=lane_seed(segment, slot))
        number, reason = ask_trial(study, experiment, segment=segment, slot=slot)
    if reason is not None:
        print(f"kubetune: no new trial in slot {slot}: {reason}")
    return number


def ask_trial(
    study: optuna.Study, experiment: Experiment, *, segment: int, slot: int, tags: dict[str, str] | None = None
) -> tuple[int, str | None]:
    """The suggest step's work on an open study: the trial's number, or NO_TRIAL and the stop rule that holds.

    ``tags``: system attributes the trial carries before it runs (the suggest service's request, so a
    retried request finds its trial: :func:`kubetune.study.ask_tagged`).
    """
    reason = stop_before_trial(study, experiment)
    if reason is not None:
        return NO_TRIAL, reason
    trial = ask_tagged(study, tags) if tags else study.ask()
    return record_trial(study, trial, experiment, segment=segment, slot=slot), None


def record_trial(study: optuna.Study, trial: optuna.Trial, experiment: Experiment, *, segment: int, slot: int) -> int:
    """Sample the asked trial and record what the trainer needs; again on the same trial, it records the same."""
    # A first heartbeat now: a lane that dies before training starts leaves a trial that goes stale and is retried.
    beat(study, trial.number)
    chosen, architecture = space.sample(trial, experiment.spec)
    trial.set_user_attr("hyperparameters", space.trainer_hyperparameters(experiment.spec, chosen))
    trial.set_user_attr("architecture", architecture)
    if architecture is not None:
        trial.set_user_attr("architecture_code", encoding.encode(architecture))
    trial.set_user_attr("segment", segment)
    trial.set_user_attr("run", run_name(experiment, segment))  # the segment's end fails it if its lane dies
    trial.set_user_attr("slot", slot)
    # What kubetune's own samplers know of the trial: evolution's parent, whose weights the train step may
    # inherit; the DARTS search whose cell it trains.
    trial_attrs = getattr(study.sampler, "trial_attrs", None)
    for key, value in (trial_attrs(trial.number) if callable(trial_attrs) else {}).items():
        trial.set_user_attr(key, value)
    return trial.number


def train_threads(experiment: Experiment) -> int:
    """CPU threads for one trainer: ``KUBETUNE_TRAIN_THREADS`` (set by the local runner) or the CPU request."""
    if os.environ.get("KUBETUNE_TRAIN_THREADS"):
        return max(1, int(os.environ["KUBETUNE_TRAIN_THREADS"]))
    cpu = experiment.spec.trial.resources.cpu
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, math.floor(cores))


def train_trial(
    experiment: Experiment, *, number: int, split_path: str, model_path: str, predictions_path: str
) -> dict:
    """Train trial ``number``, reporting to the pruner so it can stop the trial; never raises for a bad trial.

    With ``trial.fidelity`` epochs it reports after every epoch, at the epoch's number; with dataFraction or
    width it trains once per level (:func:`_climb`). Either way the trial's ``fidelity`` attribute records,
    for every value reported, its step and the fidelity it was measured at.

    For a completed trial, writes the model's class scores on the held-out validation and test sets to
    ``predictions_path`` (for the evaluate step; an empty file otherwise) and saves its weights to
    ``model_path``, uploaded to MLflow, their only copy. Returns ``{"status", "reason", "epochs_run",
    "train_seconds", "params", "history", "started_at", "ended_at"}`` (the last two in wall-clock ms, for
    the trial's MLflow run).
    """
    import numpy as np
    import torch

    from kubetune import nas, train
    from kubetune.data import read_split
    from kubetune.meta_record import data_profile, hardware

    torch.set_num_threads(train_threads(experiment))
    study = load_study(experiment)
    frozen = get_trial(study, number)
    if frozen.state.is_finished():
        return {
            "status": "skipped",
            "reason": f"trial already {frozen.state.name}",
            "epochs_run": 0,
            "train_seconds": 0.0,
            "params": 0,
            "history": [],
        }
    split = read_split(split_path)
    if "data_profile" not in study.user_attrs:  # for meta-learning across experiments (kubetune.meta)
        study.set_user_attr("data_profile", data_profile(split, experiment.spec.data.source))
    set_trial_attrs(study, number, {"hardware": hardware(train.pick_device())})
    architecture = frozen.user_attrs.get("architecture") or nas.default_architecture(split.input_shape)
    seed = (experiment.spec.strategy.sampler.seed or 0) + number
    metric = experiment.spec.objectives[0].metric
    prunable = not experiment.spec.is_multi_objective and metric in EPOCH_METRICS
    live = live_trial(study, number)
    kind = experiment.spec.trial.fidelity.kind
    reported: list[dict] = []  # per value reported: its step and the fidelity it was measured at

    def report(value: float, step: int, fidelity: dict, *, ask: bool) -> bool:
        """Report ``value`` at ``step``; whether the pruner stops the trial (asked only when ``ask``)."""
        if not prunable or not math.isfinite(value):
            return False
        live.report(value, step)
        reported.append({"step": step, **fidelity, metric: value})
        return ask and live.should_prune()

    started_at = train.wall_clock_ms()
    with heartbeat(study, number, interval=experiment.spec.trial.heartbeat_seconds):
        if kind == "epochs":
            model = nas.build_model(
                architecture, input_shape=split.input_shape, num_classes=split.num_classes, seed=seed
            )
            if experiment.spec.strategy.inherit_weights and frozen.user_attrs.get("parent_trial") is not None:
                set_trial_attrs(study, number, _inherit(study, model, number, frozen.user_attrs["parent_trial"]))
            result = train.train_model(
                model,
                split,
                epochs=experiment.spec.trial.epochs,
                hyperparameters=frozen.user_attrs["hyperparameters"],
                seed=seed,
                on_epoch=lambda epoch, metrics: report(metrics[metric], epoch, {"epochs": epoch}, ask=True),
            )
        else:
            model, result = _climb(
                experiment,
                split,
                architecture,
                hyperparameters=frozen.user_attrs["hyperparameters"],
                seed=seed,
                report=report,
            )
    ended_at = train.wall_clock_ms()
    set_trial_attrs(study, number, {"fidelity": {"kind": kind, "levels": reported}})
    held_out: dict[str, Any] = {}  # np.savez's keyword arrays
    # Only a completed trial is scored or can become the registered model; a pruned or failed one (out of
    # GPU memory, say) touches the device no more, so it cannot fail again and take its lane down.
    if result.status == "complete":
        from kubetune import tracking

        train.save_model(model, architecture, model_path, input_shape=split.input_shape, num_classes=split.num_classes)
        tracking.log_trial_weights(study.user_attrs["mlflow_parent_run_id"], number, model_path)
        held_out = {
            name: train.predict_logits(model, x) for name, x in (("val", split.x_val), ("test", split.x_test)) if len(x)
        }
    with open(predictions_path, "wb") as file:
        np.savez(file, **held_out)
    return {
        "status": result.status,
        "reason": result.reason,
        "epochs_run": result.epochs_run,
        "train_seconds": result.train_seconds,
        "params": nas.count_parameters(model),
        "history": result.history,
        "started_at": started_at,
        "ended_at": ended_at,
    }


def _climb(
    experiment: Experiment,
    split: SplitData,
    architecture: dict,
    *,
    hyperparameters: dict,
    seed: int,
    report: Callable[..., bool],
) -> tuple[nn.Module, TrainResult]:
    """Train a fresh network at each level of the fidelity ladder in turn, for ``trial.epochs`` epochs each.

    Each level's last validation value is reported at the level's step, and the pruner is asked between
    levels, never after the last: a trial that reached full fidelity completes. Every level starts from the
    same seed; the data subsets are :func:`kubetune.fidelity.subset_rows` of ``data.seed``, so every trial of
    the study trains on the same rows at a level. Returns the last network trained and a result whose
    ``history`` is that network's, ``epochs_run`` and ``train_seconds`` those of all levels together.
    """
    from kubetune import nas, train

    spec = experiment.spec
    kind, levels, metric = spec.trial.fidelity.kind, spec.fidelity_ladder, spec.objectives[0].metric
    epochs, seconds = 0, 0.0
    for index, level in enumerate(levels, start=1):
        at_split, at_architecture = split, architecture
        if kind == "dataFraction":
            rows = fidelity.subset_rows(split.y_train, level.fraction, spec.data.seed)
            at_split = dataclasses.replace(split, x_train=split.x_train[rows], y_train=split.y_train[rows])
            measured: dict[str, float] = {"dataFraction": level.fraction, "trainRows": len(rows)}
        else:
            at_architecture = fidelity.scale_width(architecture, level.fraction)
            measured = {"width": level.fraction}
        model = nas.build_model(
            at_architecture, input_shape=split.input_shape, num_classes=split.num_classes, seed=seed
        )
        result = train.train_model(
            model, at_split, epochs=spec.trial.epochs, hyperparameters=hyperparameters, seed=seed
        )
        epochs, seconds = epochs + result.epochs_run, seconds + result.train_seconds
        where = f"level {index} of {len(levels)} ({kind} {level.fraction:.3g}, step {level.step})"
        if result.status != "complete":
            result = dataclasses.replace(result, reason=f"{result.reason} at {where}")
            break
        if report(result.history[-1][metric], level.step, measured, ask=index < len(levels)):
            result = dataclasses.replace(result, status="pruned", reason=f"pruned after {where}")
            break
    return model, dataclasses.replace(result, epochs_run=epochs, train_seconds=seconds)


def _inherit(study: optuna.Study, model: nn.Module, number: int, parent: int) -> dict:
    """Copy trial ``parent``'s stored weights into ``model``; the trial attributes that say whether it did.

    Never raises: a child whose parent left no weights (pruned, failed, or a lost MLflow store) trains
    from its own initialisation, and ``inheritance.reason`` says why.
    """
    from kubetune import tracking
    from kubetune.inheritance import inherit_weights

    try:
        state = _parent_weights(study, parent)
    except (tracking.MissingWeights, tracking.TrackingError) as error:
        print(f"kubetune: trial {number} trains from scratch: {error}")
        return {"inherited": False, "inheritance": {"parent": parent, "reason": str(error)}}
    summary = inherit_weights(state, model).as_dict()
    print(f"kubetune: trial {number} inherits from trial {parent}: {summary}")
    return {"inherited": True, "inheritance": {"parent": parent, **summary}}


def _parent_weights(study: optuna.Study, parent: int) -> dict[str, torch.Tensor]:
    """Trial ``parent``'s trained state dict, read from MLflow; MissingWeights when it has none."""
    import pickle
    import tempfile

    import torch
    from optuna.trial import TrialState

    from kubetune import tracking

    state = get_trial(study, parent).state
    if state != TrialState.COMPLETE:
        raise tracking.MissingWeights(f"parent trial {parent} is {state.name}: only a completed trial keeps weights")
    with tempfile.TemporaryDirectory() as folder:
        path = tracking.download_trial_weights(study.user_attrs["mlflow_parent_run_id"], parent, folder)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as error:
            raise tracking.MissingWeights(
                f"the stored weights of trial {parent} cannot be read ({type(error).__name__}: {error})"
            ) from None
