"""A1111's `launch` module as extensions' install.py scripts use it (`import launch`); only on their PYTHONPATH."""
from modules.launch_utils import is_installed, run, run_pip  # noqa: F401
