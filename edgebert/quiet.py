"""Keep native libraries' chatter (TensorFlow's start-up, the TFLite converter's passes, LiteRT's
delegate notice) off the terminal, where it would bury the one line a user needs.

Those libraries write from C++ straight to file descriptors 1 and 2, past Python's sys.stdout, so the
descriptors themselves are pointed at a scratch file for the duration and restored afterwards.
Set EDGEBERT_VERBOSE=1 to see everything.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def native_output_silenced():
    if os.environ.get("EDGEBERT_VERBOSE"):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)
