"""What changed between the spec a study was last run with and a new one, named by the fields that matter.

A study's search definition is pinned once a trial has a result (Experiment.search_space_fingerprint);
when a rerun changes it, the refusal names the fields to restore: each changed field is tried alone on
the old spec, and only those that change the fingerprint are named.
"""

from __future__ import annotations

from typing import Any

from kubetune.errors import UserError
from kubetune.spec import Experiment, parse_experiment

__all__ = ["describe_changes"]

_UNSET = object()


def _leaves(document: Any, path: tuple = ()) -> dict[tuple, Any]:
    """Every value of a document by its path; a list is one value."""
    if isinstance(document, dict) and document:
        return {leaf: value for key, child in document.items() for leaf, value in _leaves(child, (*path, key)).items()}
    return {path: document}


def _document(leaves: dict[tuple, Any]) -> dict:
    """The document of ``leaves`` (the inverse of _leaves); a section's fields win over an empty value of it."""
    document: dict = {}
    for path, value in leaves.items():
        node = document
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if not isinstance(node.get(path[-1]), dict):
            node[path[-1]] = value
    return document


def _holds(leaves: dict[tuple, Any], prefix: tuple) -> bool:
    """Whether the document has a value at ``prefix`` or under it."""
    return any(p[: len(prefix)] == prefix for p in leaves)


def _shown(leaves: dict[tuple, Any], path: tuple) -> str:
    if path in leaves:
        return repr(leaves[path])
    return "{...}" if _holds(leaves, path) else "unset"


def _section(old: dict[tuple, Any], new: dict[tuple, Any], path: tuple) -> tuple:
    """The outermost part of ``path`` that one spec leaves empty or out (a whole new architecture), else ``path``."""
    return next(
        (
            path[:i]
            for i in range(2, len(path))
            if path[:i] in old or path[:i] in new or not (_holds(old, path[:i]) and _holds(new, path[:i]))
        ),
        path,
    )


def describe_changes(before: dict | None, experiment: Experiment) -> str:
    """The spec fields whose change alone changes the search-space fingerprint, each with its old and new value."""
    try:
        fingerprint = parse_experiment(before).search_space_fingerprint()
    except UserError:  # not recorded, or refused by this version's stricter rules
        return "the spec it was last run with is not recorded or no longer valid, so the fields cannot be named"
    old, new = _leaves(before), _leaves(experiment.to_dict())
    changed: dict[tuple, str] = {}
    for path in sorted(
        p for p in old.keys() | new.keys() if p[0] == "spec" and old.get(p, _UNSET) != new.get(p, _UNSET)
    ):
        probe = {**old, path: new[path]} if path in new else {p: v for p, v in old.items() if p != path}
        try:
            alters = parse_experiment(_document(probe)).search_space_fingerprint() != fingerprint
        except UserError:
            alters = True  # not valid on its own: it changed together with another field
        if alters:
            named = _section(old, new, path)
            changed[named] = f"{'.'.join(map(str, named))} ({_shown(old, named)} -> {_shown(new, named)})"
    return (
        ", ".join(changed.values())
        or "a field of data, objective, parameters, architecture, trial.epochs, trial.batchSize or trial.fidelity"
    )
