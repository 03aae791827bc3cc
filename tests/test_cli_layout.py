"""The shape of the command line: one lazily loading group over a table of commands, the converter's
commands beside the converter, the layering as import-linter contracts, and a README that documents
every command and option in the order `edgebert --help` lists them."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner
import pytest

from edgebert.cli import COMMANDS, cli

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def _run_main(argv: list[str], before: str = "") -> str:
    """Python code that runs `edgebert ARGV` in-process and then prints the modules it loaded."""
    return ("import sys\n" + before +
            "from edgebert.cli import main\n"
            f"sys.argv = ['edgebert', *{argv!r}]\n"
            "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
            "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in "
            "('converters', 'tensorflow', 'tf_keras', 'numpy', 'tokenizers') or m.startswith('edgebert.cli.')))\n")


def test_top_level_help_imports_no_command_module():
    result = _python(_run_main(["--help"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "LOADED []"


def test_top_level_help_lists_the_table_in_order_as_click_would_for_the_loaded_commands():
    """The listing drawn from the table equals click's own listing of the real commands."""
    eager = click.Group("edgebert", help=cli.help, params=cli.params,
                        context_settings={"help_option_names": ["-h", "--help"]})
    for name in COMMANDS:
        eager.add_command(cli.get_command(None, name), name)
    eager.list_commands = lambda ctx: list(COMMANDS)
    lazy_help = CliRunner().invoke(cli, ["--help"], prog_name="edgebert", terminal_width=100)
    eager_help = CliRunner().invoke(eager, ["--help"], prog_name="edgebert", terminal_width=100)
    assert lazy_help.exit_code == 0
    assert lazy_help.output == eager_help.output
    listed = [line.split()[0] for line in lazy_help.output.split("Commands:")[1].strip().splitlines()]
    assert listed == list(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_table_entry_names_its_command_and_its_first_sentence(name):
    command = cli.get_command(None, name)
    assert command.name == name
    assert COMMANDS[name][1] == command.get_short_help_str(limit=10 ** 6)


def test_a_device_command_loads_only_its_own_module():
    result = _python(_run_main(["variants"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "LOADED ['edgebert.cli.catalog']"


def test_the_converter_commands_live_in_converters():
    for name, (target, _) in COMMANDS.items():
        module = target.split(":")[0]
        assert module.startswith(("edgebert.cli.", "converters.commands.")), (name, module)
    assert not list((REPO / "edgebert").glob("*_cli.py"))


def test_a_converter_command_without_the_converter_package_is_one_line():
    """A copy of edgebert/ alone (as deploy ships it) has no converters package at all."""
    result = _python(_run_main(["convert", "bert-tiny", "--out", "x"], "sys.modules['converters'] = None\n"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "error: this command needs the converter (converters is missing): " \
                            "pip install 'edgebert[convert]'\n"
    assert "code = " not in result.stdout and result.stdout.splitlines()[-1].startswith("LOADED")


def test_a_converter_command_without_tensorflow_is_one_line_and_exit_2():
    """A device install has the converters package but not TensorFlow."""
    code = _run_main(["convert", "bert-tiny", "--out", "x"], "sys.modules['tensorflow'] = None\n") + \
        "print('EXIT', code)\n"
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "error: this command needs the converter (tensorflow is missing): " \
                            "pip install 'edgebert[convert]'\n"
    assert result.stdout.splitlines()[-1] == "EXIT 2"


def test_import_contracts_are_kept():
    """pyproject.toml's [tool.importlinter] contracts: the device side never imports the converter, the
    benchmarks, TensorFlow, tf_keras, tfmot, torch or ray; layers benchmarks > converters > edgebert; no
    import circle at any depth."""
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint_imports is None:
        message = "import-linter is not installed (pip install -e '.[test]')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run([lint_imports], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def _readme_sections() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = text.index("\n## Commands\n"), text.index("\n## The bundle\n")
    chunks = re.split(r"^(?=### )", text[start:end], flags=re.M)
    return [(m.group(1), chunk) for chunk in chunks if (m := re.match(r"### `edgebert ([a-z-]+)", chunk))]


def test_readme_command_reference_follows_the_help_order():
    assert [name for name, _ in _readme_sections()] == list(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_readme_documents_every_option_of_the_command(name):
    section = dict(_readme_sections())[name]
    command = cli.get_command(None, name)
    flags = [flag for param in command.params if isinstance(param, click.Option)
             for flag in (*param.opts, *param.secondary_opts) if flag.startswith("--") and flag != "--help"]
    missing = [flag for flag in flags if not re.search(re.escape(flag) + r"(?![\w-])", section)]
    assert missing == [], f"README's `edgebert {name}` section does not mention {missing}"
