"""A1111's `modules.shared`, as extensions import it: a public face over modules/compat/host.py, holding no logic.

opts (settings, `opts.data`, `opts.add_option`), state (the running job), cmd_opts (flags), OptionInfo,
options_section; `sd_model`, `device`, `models_path`, `data_path` follow the app.
"""
from modules.compat.host import OptionInfo, cmd_opts, options_section, opts, state

__all__ = ["OptionInfo", "cmd_opts", "options_section", "opts", "state"]


def __getattr__(name: str):
    from modules.compat.host import shared_attr

    return shared_attr(name)
