"""A1111's launch helpers that extensions' install.py call: is_installed, run_pip, run.

install.py runs in a subprocess with the app's Python (modules/extensions.py), so pip installs into the app's
environment, as A1111's do.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import shlex
import subprocess
import sys
from typing import Optional

python = sys.executable


def is_installed(package: str) -> bool:
    """True if a distribution or an importable module of that name exists."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def run(command: str, desc: Optional[str] = None, errdesc: Optional[str] = None, live: bool = False) -> str:
    if desc:
        print(desc, flush=True)
    done = subprocess.run(command, shell=True, capture_output=not live, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{errdesc or 'command failed'}: {command}\n{done.stderr or ''}")
    return done.stdout or ""


def run_pip(command: str, desc: Optional[str] = None, live: bool = False) -> str:
    """run_pip("install foo", "foo"): pip with the app's Python."""
    return run(f"{shlex.quote(python)} -m pip {command} --prefer-binary", f"Installing {desc}" if desc else None,
               f"Couldn't install {desc or command}", live)
