"""`edgebert deploy`: a thin layer over edgebert.deploy (library errors become one line through the
group in edgebert.cli)."""
from __future__ import annotations

from pathlib import Path

import click

from edgebert.cli import say


@click.command("deploy")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--host", "host", required=True, metavar="URL",
              help="The device: ssh://user@host[:port] or adb://SERIAL (as `adb devices` lists it).")
@click.option("--identity", type=click.Path(path_type=Path), default=None,
              help="ssh private key file (default: ssh's own choice, ~/.ssh/config included).")
@click.option("--remote-dir", default=None,
              help="Working directory on the device (default: ~/edgebert-deploy over ssh, "
                   "/data/local/tmp/edgebert-deploy over adb); made by deploy, reused by later deploys.")
@click.option("--python", "python", default="python3", show_default=True,
              help="The device's Python, with numpy, tokenizers, click, pytest and ai-edge-litert (or "
                   "tflite-runtime) installed: a command name or a path (e.g. ~/venv/bin/python).")
@click.option("--runs", type=int, default=None, help="Timed inferences per bundle (default: edgebert bench's).")
@click.option("--threads", type=int, default=None, help="Interpreter threads (default: edgebert bench's).")
@click.option("--budget", type=click.Path(path_type=Path), default=None,
              help="Latency/memory budget for the device tests (JSON or TOML; see device_tests/README.md).")
@click.option("--results", "results_dir", type=click.Path(path_type=Path), default=Path("results"),
              show_default=True, help="Local directory for the results file <host>-<UTC time>.json.")
def deploy(bundles, host, identity, remote_dir, python, runs, threads, budget, results_dir):
    """Copy BUNDLEs to a device over ssh or adb, benchmark them there and run the device tests there.

    Ships this checkout's edgebert/, device_tests/ and samples/ with the bundles (the device needs only
    its Python and the device-side packages), runs `edgebert bench` and `pytest device_tests` on the
    device, prints the bench table and the test summary, and saves the results JSON locally. Exits
    non-zero when the device tests or the benchmark fail.
    """
    from edgebert.deploy import DeployError, deploy as run_deploy

    outcome = run_deploy(host, list(bundles), identity=identity, remote_dir=remote_dir, python=python, runs=runs,
                         threads=threads, budget=budget, results_dir=results_dir, log=say)
    if outcome.bench_output.strip():
        click.echo(outcome.bench_output.rstrip())
        click.echo("")
    click.echo(f"device tests on {outcome.target}:")
    click.echo(outcome.tests_output.rstrip())
    if outcome.results_path is not None:
        click.echo(f"\nresults: {outcome.results_path}")
    problems = []
    if outcome.bench_error:
        problems.append(f"the benchmark failed ({outcome.bench_error})")
    if outcome.tests_exit_code != 0:
        problems.append(f"the device tests failed ({outcome.tests_summary})")
    if problems:
        raise DeployError(f"{outcome.target}: " + "; ".join(problems))
