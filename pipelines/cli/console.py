"""What the CLI's console shows: summaries on stdout, kept in order with the progress on stderr
(`runtime.progress_logging`) whether the two go to one place or two."""

from __future__ import annotations

import os
import sys
from typing import Any


def print_summary(summary: Any) -> None:
    text = summary.render(notes=not one_place())
    if text:  # the notes alone, already read as progress: no blank line for them
        print(text)


def one_place() -> bool:
    """Do stdout and stderr go to one place (a terminal, `retrain > log 2>&1`, one pipe)? Then
    a summary's notes were read as they were logged, in order, and are not printed again;
    stdout on its own (for scripts) keeps them."""
    try:
        out, err = os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no file behind one (a test's capture)
        return False
    return os.path.samestat(out, err)


def line_buffered_stdout() -> None:
    # Redirected to a file (cron: `retrain > log 2>&1`) stdout is block-buffered and stderr
    # is not: each printed line must reach the file before the progress lines after it.
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # absent on a test's capture
    if reconfigure is not None:
        reconfigure(line_buffering=True)
