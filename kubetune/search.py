"""One lane of the search: suggest a trial, then train it against the shared study.

These are the bodies of the suggest and train components; they take and return plain values
(trial numbers, paths, JSON-able dicts) so that they cross KFP component boundaries unchanged.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from kubetune import encoding, space
from kubetune.segments import run_name
from kubetune.spec import Experiment
from kubetune.stop_rules import stop_before_trial
from kubetune.study import beat, get_trial, heartbeat, lane_seed, live_trial, load_study, set_trial_attrs

if TYPE_CHECKING:
    import optuna
    import torch
    from torch import nn

__all__ = ["NO_TRIAL", "suggest_trial", "train_threads", "train_trial"]

NO_TRIAL = -1  # what suggest_trial returns when a stop rule holds; the pipeline trains only numbers >= 0

# Metrics the trainer reports every epoch; pruning needs the objective to be one of them.
EPOCH_METRICS = ("val_accuracy", "val_loss")


def suggest_trial(experiment: Experiment, *, segment: int, slot: int) -> int:
    """Ask the study for a trial just in time and record what the trainer needs; returns its number.

    Returns NO_TRIAL instead, asking nothing, when a stop rule already holds (the pipeline then skips
    the lane's training), so a reached target or duration ends the search within the segment.
    """
    study = load_study(experiment, seed_offset=lane_seed(segment, slot))
    reason = stop_before_trial(study, experiment)
    if reason is not None:
        print(f"kubetune: no new trial in slot {slot}: {reason}")
        return NO_TRIAL
    trial = study.ask()
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
    # A sampler that mutates a parent (evolution) names it, so the train step can inherit its weights.
    parent_of = getattr(study.sampler, "parent_of", None)
    parent = parent_of(trial.number) if callable(parent_of) else None
    if parent is not None:
        trial.set_user_attr("parent_trial", int(parent))
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
    """Train trial ``number``, reporting every epoch so the pruner can stop it; never raises for a bad trial.

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
    architecture = frozen.user_attrs.get("architecture") or nas.default_architecture(split.input_shape)
    seed = (experiment.spec.strategy.sampler.seed or 0) + number
    model = nas.build_model(architecture, input_shape=split.input_shape, num_classes=split.num_classes, seed=seed)
    if experiment.spec.strategy.inherit_weights and frozen.user_attrs.get("parent_trial") is not None:
        set_trial_attrs(study, number, _inherit(study, model, number, frozen.user_attrs["parent_trial"]))
    metric = experiment.spec.objectives[0].metric
    prunable = not experiment.spec.is_multi_objective and metric in EPOCH_METRICS
    live = live_trial(study, number)

    def on_epoch(epoch: int, metrics: dict) -> bool:
        if not prunable or not math.isfinite(metrics[metric]):
            return False
        live.report(metrics[metric], epoch)
        return live.should_prune()

    started_at = train.wall_clock_ms()
    with heartbeat(study, number, interval=experiment.spec.trial.heartbeat_seconds):
        result = train.train_model(
            model,
            split,
            epochs=experiment.spec.trial.epochs,
            hyperparameters=frozen.user_attrs["hyperparameters"],
            seed=seed,
            on_epoch=on_epoch,
        )
    ended_at = train.wall_clock_ms()
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
