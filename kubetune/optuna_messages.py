"""Optuna's messages that do not apply to kubetune, silenced for every module that builds on Optuna."""

from __future__ import annotations

import warnings

import optuna

__all__ = ["quiet"]


def quiet() -> None:
    """Optuna logs warnings only, and not the notices below (adding the same filter twice keeps one)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # kubetune uses experimental features on purpose: TPE's ``group``, heartbeats, metric names.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # kubetune records heartbeats itself for ask/tell trials (kubetune.study.heartbeat), so Optuna's hint does not apply.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
