"""Options and fixtures of the on-device suite (see README.md here).

    python -m pytest device_tests --bundles DIR_OR_BUNDLE... [--budget FILE] [--runs N] [--threads N]

Every test is parametrized over the bundles found under --bundles. Bad options (a path without
bundles, an unreadable or malformed budget file, --runs 0) are one pytest usage error naming the
option and the file, before anything runs.

The repository's main test run (`python -m pytest` at the top, testpaths = ["tests"]) never loads this
file. If it is loaded anyway (say `python -m pytest .`), the options keep their defaults and every
device test is skipped: there are no bundles.
"""
from __future__ import annotations

import pytest

from .device_checks import BudgetError, find_bundles, load_budget


class DeviceSettings:
    def __init__(self, bundles, budget_path, budget, runs, threads):
        self.bundles, self.budget_path, self.budget = bundles, budget_path, budget
        self.runs, self.threads = runs, threads
        self.measurements: list[str] = []  # one line per bundle measured, for the terminal summary


def pytest_addoption(parser):
    group = parser.getgroup("edgebert", "edgebert device tests")
    group.addoption("--bundles", nargs="+", action="append", default=[], metavar="DIR",
                    help="bundle directories, or directories holding bundle directories (repeatable)")
    group.addoption("--budget", default=None, metavar="FILE",
                    help='latency/memory budget, JSON (or TOML if named *.toml): {"default": {"p90_ms": 50, '
                         '"peak_mb": 120}, "bundles": {"<bundle dir name>": {...}}}')
    group.addoption("--runs", type=int, default=50, metavar="N",
                    help="timed runs per bundle for the budget check (default 50)")
    group.addoption("--threads", type=int, default=1, metavar="N",
                    help="interpreter threads (default 1)")


def pytest_configure(config):
    raw = [path for group in (config.getoption("bundles") or []) for path in group]
    try:
        bundles = find_bundles(raw)
    except ValueError as error:
        raise pytest.UsageError(f"--bundles {error}") from None
    budget_path, budget = config.getoption("budget"), None
    if budget_path is not None:
        try:
            budget = load_budget(budget_path)
        except BudgetError as error:
            raise pytest.UsageError(f"--budget {budget_path}: {error}") from None
    runs, threads = config.getoption("runs"), config.getoption("threads")
    if runs < 1:
        raise pytest.UsageError(f"--runs must be at least 1, got {runs}")
    if threads is not None and threads < 1:
        raise pytest.UsageError(f"--threads must be at least 1, got {threads}")
    config.edgebert_device = DeviceSettings(bundles, budget_path, budget, runs, threads)


def pytest_generate_tests(metafunc):
    if "bundle" not in metafunc.fixturenames:
        return
    bundles = metafunc.config.edgebert_device.bundles
    if not bundles:
        skip = pytest.mark.skip(reason="no bundles: run with --bundles DIR (see device_tests/README.md)")
        metafunc.parametrize("bundle", [pytest.param(None, marks=skip)], indirect=True, ids=["no-bundles"])
        return
    metafunc.parametrize("bundle", bundles, indirect=True, scope="session", ids=[path.name for path in bundles])


@pytest.fixture(scope="session")
def settings(pytestconfig) -> DeviceSettings:
    return pytestconfig.edgebert_device


@pytest.fixture(scope="session")
def bundle(request):
    from edgebert.bundle import read_bundle
    from edgebert.errors import EdgebertError

    try:
        return read_bundle(request.param)
    except EdgebertError as error:
        pytest.fail(str(error), pytrace=False)


def pytest_terminal_summary(terminalreporter, config):
    settings = getattr(config, "edgebert_device", None)
    if settings and settings.measurements:
        terminalreporter.write_sep("-", "edgebert budget")
        for line in settings.measurements:
            terminalreporter.write_line(line)
