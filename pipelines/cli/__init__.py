"""`lstm-pipeline`: the command line. User errors print one line and exit 2.

:mod:`.parser` the commands and their arguments, :mod:`.preflight` the checks of input before
any flow runs, :mod:`.commands` each command and `main`.
"""

from pipelines.cli.commands import main
from pipelines.cli.parser import build_parser

__all__ = ["build_parser", "main"]
