"""An always-on script laid out with A1111's ui_components (InputAccordion as its "enabled" argument) that
reads A1111's paths_internal at import."""
import os

import modules.scripts as scripts
from modules.paths_internal import extensions_builtin_dir, extensions_dir, models_path, script_path
from modules.ui_components import (DropdownMulti, FormColumn, FormGroup, FormRow, InputAccordion, ResizeHandleRow,
                                   ToolButton)

SEEN_PATHS = {"extensions_dir": extensions_dir, "models_path": models_path, "script_path": script_path,
              "extensions_builtin_dir": extensions_builtin_dir, "here": scripts.basedir()}


class FormUI(scripts.Script):
    def title(self):
        return "Form UI"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with InputAccordion(False, label="Form UI", elem_id=self.elem_id("enabled")) as enabled:
            with enabled.extra():
                ToolButton("↺", elem_id=self.elem_id("reset"), tooltip="Reset")
            with ResizeHandleRow():
                with FormColumn():
                    with FormGroup():
                        with FormRow():
                            words = DropdownMulti(label="Words", choices=["calm", "stormy", "night"],
                                                  value=["calm"], elem_id=self.elem_id("words"))
        return [enabled, words]

    def process(self, p, enabled, words):
        if enabled:
            p.extra_generation_params["Form UI"] = "+".join(words)
            p.extra_generation_params["Form UI folder"] = os.path.basename(SEEN_PATHS["here"])
