"""Storage classes whose public calls wait out an outage: each named method of the base, run through ``_retried``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["STORAGE_CALLS", "retry_methods"]

# Optuna's BaseStorage calls that every kubetune storage retries (each class adds its own).
STORAGE_CALLS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
)


def _with_retries(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self._retried(method, *args, **kwargs)

    return call


def retry_methods(cls: type, base: type, names: Iterable[str]) -> None:
    """Give ``cls`` each of ``base``'s methods ``names``, called through ``cls._retried(method, ...)``; a method
    ``cls`` defines itself is left as it is (it retries in its own way)."""
    for name in names:
        if name in vars(cls):
            continue
        setattr(cls, name, _with_retries(getattr(base, name)))
