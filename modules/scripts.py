"""A1111's `modules.scripts`, as extensions import it: a public face over modules/scripting.py and
modules/compat/host.py, holding no logic. `scripts_txt2img` / `scripts_img2img` are the engine's runners."""
from modules.compat.host import basedir
from modules.scripting import (AlwaysVisible, PostprocessBatchListArgs, PostprocessImageArgs, Script, ScriptArg,
                               ScriptClass, ScriptRunner)

__all__ = ["AlwaysVisible", "PostprocessBatchListArgs", "PostprocessImageArgs", "Script", "ScriptArg",
           "ScriptClass", "ScriptRunner", "basedir"]


def __getattr__(name: str):
    from modules.compat.host import scripts_attr

    return scripts_attr(name)
