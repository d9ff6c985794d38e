"""Running the command line inside a project directory, as a user in that directory would."""

from __future__ import annotations

import os
from pathlib import Path

from edgeeval.cli import main


def run_cli(project: Path, *args: str) -> int:
    """`edgeeval ARGS...` with `project` as the working directory; returns the exit status."""
    cwd = os.getcwd()
    os.chdir(project)
    try:
        return main(list(args))
    finally:
        os.chdir(cwd)
