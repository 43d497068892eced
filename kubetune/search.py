"""One lane of the search: suggest a trial, then train it against the shared study.

These are the bodies of the suggest and train components; they take and return plain values
(trial numbers, paths, JSON-able dicts) so that they cross KFP component boundaries unchanged.
"""

from __future__ import annotations

import math
import os
from typing import Any

from kubetune import space
from kubetune.segments import run_name
from kubetune.spec import Experiment
from kubetune.stop_rules import stop_before_trial
from kubetune.study import beat, get_trial, heartbeat, lane_seed, live_trial, load_study

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
    trial.set_user_attr("segment", segment)
    trial.set_user_attr("run", run_name(experiment, segment))  # the segment's end fails it if its lane dies
    trial.set_user_attr("slot", slot)
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
