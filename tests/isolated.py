"""A Python process that cannot import the project: the dependencies only, as a user's client.

`-I -S`: no PYTHONPATH, no current folder, no site processing, so neither the editable
install's `.pth` finder nor the checkout is on `sys.path`; the environment's site-packages
is appended by hand for the dependencies (MLflow, pandas, TensorFlow...).
"""

from __future__ import annotations

import sys
import sysconfig

DEPS = sysconfig.get_paths()["purelib"]

_PREAMBLE = f"""\
import importlib.util, sys
sys.path.append({DEPS!r})
for _name in ("pipelines", "lstm_core"):
    assert importlib.util.find_spec(_name) is None, f"{{_name}} is importable: {{sys.path}}"
"""


def isolated_command(code: str, *args: str) -> list[str]:
    """argv running `code` (after the check above) with `args` as sys.argv[1:]."""
    return [sys.executable, "-I", "-S", "-c", _PREAMBLE + code, *args]
