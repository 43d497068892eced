"""What a service test does when a server it needs cannot start: skip on a laptop, fail under CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def is_ci() -> bool:
    """True under CI: the ``CI`` environment variable is ``true``, ``1`` or ``yes``."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_or_skip(what: str, exc: BaseException) -> NoReturn:
    """Give up on a server that cannot start: skip the test, or fail it under CI (service tests must run there).

    Args:
        what: what the test needed, e.g. ``"PostgreSQL"``.
        exc: why it is not available, usually a :class:`kubetune.devstack.ServiceError`.
    """
    message = f"{what} is not available: {exc}"
    if is_ci():
        pytest.fail(f"{message} (CI=true: service tests must run, not skip)", pytrace=False)
    pytest.skip(message)
