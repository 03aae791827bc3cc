"""How every CLI test calls the command and checks the shape of a failure."""
from click.testing import CliRunner


def invoke(*args, env=None, input=None):
    from edgebert.cli import cli
    return CliRunner().invoke(cli, [str(arg) for arg in args], env=env, input=input, prog_name="edgebert",
                              catch_exceptions=False)


def error_line(result, exit_code: int, progress: tuple = ()) -> str:
    """Assert the failure shape and return the error line: nothing on stdout, no traceback, and stderr
    is the progress lines printed before the failure (if any), then exactly one `error: ` line."""
    assert result.exit_code == exit_code, result.output
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[:-1] == list(progress), result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    return lines[-1]
