"""The converter's commands, beside the code they call. `edgebert.cli.COMMANDS` names them; each module
imports only click and edgebert at module level, so showing a command's help needs no TensorFlow."""
from edgebert.cli import CONVERT_EXTRA
from edgebert.errors import UsageError


def converters_or_exit():
    """Import TensorFlow through the converter, or explain the [convert] extra in one line (a device
    install has this package but not TensorFlow)."""
    try:
        import converters.tf_import  # noqa: F401
    except ImportError as error:
        raise UsageError(f"this command needs the converter ({error.name} is missing): {CONVERT_EXTRA}") from None
