import gradio as gr

import modules.scripts as scripts
from modules import shared
from modules.processing import StableDiffusionProcessing, StableDiffusionProcessingImg2Img


class PromptSuffixScript(scripts.Script):
    def title(self):
        return "Prompt suffix"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Accordion("Prompt suffix", open=False):
            enabled = gr.Checkbox(value=True, label="Enabled", elem_id=self.elem_id("enabled"))
            suffix = gr.Textbox(value=", masterpiece", label="Suffix", elem_id=self.elem_id("suffix"))
        return [enabled, suffix]

    def process(self, p: StableDiffusionProcessing, enabled, suffix):
        if not enabled or not suffix:
            return
        p.all_prompts = [prompt + suffix for prompt in p.all_prompts]
        p.extra_generation_params["Prompt suffix"] = suffix.strip(", ")
        if isinstance(p, StableDiffusionProcessingImg2Img):
            p.extra_generation_params["Prompt suffix mode"] = "img2img"
        self.seen_batches = []
        self.seen_steps = shared.state.sampling_steps

    def process_batch(self, p, enabled, suffix, batch_number, prompts, seeds, subseeds):
        self.seen_batches.append((batch_number, list(prompts), list(seeds)))
