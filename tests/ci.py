"""Skips that become failures in CI. Outside CI a test whose real component (a server, a runtime, a
second Python) is missing skips with its reason; in CI (`CI=true`), where `.ci/run` installs every
component, the same absence is a failure: a green run must never hide a component that did not run."""
from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI") == "true"


def missing(reason: str) -> None:
    """Skip (or, in CI, fail) the calling test because a real component it needs is absent."""
    if IN_CI:
        pytest.fail(f"missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)
