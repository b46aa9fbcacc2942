"""A1111's `modules.paths_internal`, as extensions import it: where the app and its data live, as strings.

Fixed places (the install) are plain names; those under the data folder (`data_path`, `models_path`,
`extensions_dir`, `default_output_dir`) follow the running app's `--data-dir`, read when asked (PEP 562), as
`modules.shared.data_path` does.
"""
from __future__ import annotations

import os

from modules.paths import CONFIGS_DIR, REPO_ROOT

modules_path = os.path.join(str(REPO_ROOT), "modules")
script_path = str(REPO_ROOT)
sd_configs_path = str(CONFIGS_DIR)
sd_default_config = os.path.join(sd_configs_path, "v1-inference.yaml")  # A1111's name; Atelier needs no such file
sd_model_file = os.path.join(script_path, "model.ckpt")
default_sd_model_file = sd_model_file
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
config_states_dir = os.path.join(script_path, "config_states")
cwd = os.getcwd()

FOLLOW_THE_APP = ("data_path", "models_path", "extensions_dir", "default_output_dir")  # read when asked
__all__ = ["config_states_dir", "cwd", "default_sd_model_file", "extensions_builtin_dir", "modules_path", "script_path",
           "sd_configs_path", "sd_default_config", "sd_model_file", *FOLLOW_THE_APP]


def __getattr__(name: str) -> str:
    from modules.compat import host

    if name in ("data_path", "models_path"):
        return host.shared_attr(name)
    engine = host.engine()
    if name == "extensions_dir":
        loaded = getattr(engine, "extensions", None) if engine is not None else None
        if loaded is not None:
            return str(loaded.manager.user_dir)
        return os.path.join(host.shared_attr("data_path"), "extensions")
    if name == "default_output_dir":
        return str(engine.paths.outputs_dir) if engine is not None else os.path.join(script_path, "outputs")
    raise AttributeError(f"module 'modules.paths_internal' has no attribute '{name}'")
