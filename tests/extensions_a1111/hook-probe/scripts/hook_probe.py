"""An always-on script using A1111's later hooks: process_before_every_sampling, before_hr and
postprocess_batch_list (plus before_component / after_component, called only while the UI is built)."""
import gradio as gr

import modules.scripts as scripts


class HookProbe(scripts.Script):
    def __init__(self):
        self.calls = []

    def title(self):
        return "Hook probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        mode = gr.Dropdown(label="Mode", choices=["off", "record", "drop first", "add inverted", "quiet noise"],
                           value="off", elem_id=self.elem_id("mode"))
        return [mode]

    def before_component(self, component, **kwargs):
        self.calls.append(("before_component", kwargs.get("elem_id")))

    def after_component(self, component, **kwargs):
        self.calls.append(("after_component", kwargs.get("elem_id")))

    def process_before_every_sampling(self, p, mode, x=None, noise=None, c=None, uc=None, **kwargs):
        if mode == "off":
            return
        self.calls.append(("sampling", p.is_hr_pass, tuple(x.shape), tuple(noise.shape), x is noise))
        if mode == "quiet noise" and not p.is_hr_pass:
            x.mul_(0.5)  # A1111 scripts change the starting latents in place

    def before_hr(self, p, mode):
        if mode != "off":
            self.calls.append(("before_hr", p.is_hr_pass))
            # A denoise hook added here already runs in this hires pass.
            p.add_denoise_hook("before_step", lambda state: self.calls.append(("step", state.pass_name)))

    def postprocess_batch_list(self, p, pp, mode, batch_number):
        if mode == "off":
            return
        self.calls.append(("batch_list", batch_number, len(pp.images)))
        if mode == "drop first":
            del pp.images[0]
            # A script that changes the count keeps p's per-image lists in step (A1111's rule).
            p.prompts, p.negative_prompts = p.prompts[1:], p.negative_prompts[1:]
            p.seeds, p.subseeds = p.seeds[1:], p.subseeds[1:]
        elif mode == "add inverted":
            pp.images.append(1.0 - pp.images[0])
            p.prompts = [*p.prompts, p.prompts[0] + ", inverted"]
            p.negative_prompts = [*p.negative_prompts, p.negative_prompts[0]]
            p.seeds, p.subseeds = [*p.seeds, p.seeds[0]], [*p.subseeds, p.subseeds[0]]
