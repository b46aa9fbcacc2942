"""The row at the top of each generation tab: prompts with live token counters, Generate / Interrupt / Skip, styles."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import gradio as gr

from modules.ui.common import UIContext, error_html, esc, note_html, tool_button

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _tokenizer_only_encoder():
    """Before any model is loaded, count with the shipped CLIP tokenizer (same ids for SD1, SD2 and SDXL)."""
    from modules.model_loading import load_tokenizer
    from modules.text_encoding import PromptEncoder

    return PromptEncoder(SimpleNamespace(tokenizer=load_tokenizer()))


def count_tokens(engine, text: str, steps: int = 20, negative: bool = False) -> tuple[int, int]:
    """A1111's `N/75`: a textual-inversion embedding counts as its vectors, so the loaded model's embeddings
    (what the extensions' providers offer for it, as a job would get them) go to the encoder."""
    from modules import embedding_hooks
    from modules.text_encoding import PromptEncoder

    model = engine.models.current
    if model is not None:
        encoder = PromptEncoder(model, embedding_hooks.lookup_for(model))
    else:
        encoder = _tokenizer_only_encoder()
    comments = engine.settings.get("enable_prompt_comments") is not False
    return encoder.count_tokens(text or "", steps=steps, negative=negative, comments=comments)


def counter_html(engine, text: str, steps: Any = 20, negative: bool = False) -> str:
    if not (text or "").strip():  # the page's first render: no tokenizer (nor transformers) needed at start
        return _counter_span(0, 75)
    try:
        used, limit = count_tokens(engine, text, int(steps or 20), negative)
    except Exception as e:  # a prompt the parser rejects still deserves a usable box
        log.debug("token count failed: %s", e)
        return '<span class="token-counter error" title="the prompt could not be parsed">?/75</span>'
    return _counter_span(used, limit)


def _counter_span(used: int, limit: int) -> str:
    over = " over" if used > 75 else ""
    return f'<span class="token-counter{over}" title="tokens used / current limit">{used}/{limit}</span>'


@dataclass
class Toprow:
    tab: str
    prompt: Any
    negative_prompt: Any
    prompt_count: Any
    negative_count: Any
    generate: Any
    interrupt: Any
    skip: Any
    styles: Any

    def wire_token_counters(self, ctx: UIContext, steps: Any) -> None:
        """Live `N/75` counters; the steps matter because prompt editing counts each step's prompt."""
        for box, counter, negative in ((self.prompt, self.prompt_count, False),
                                       (self.negative_prompt, self.negative_count, True)):
            def update(text: str, step_count: float, negative: bool = negative) -> str:
                return counter_html(ctx.engine, text, step_count, negative)

            for source in (box, steps):
                source.change(update, [box, steps], counter, queue=False, show_progress="hidden",
                              trigger_mode="always_last")

    def request_fields(self, data: dict) -> dict:
        """Prompts and the selected styles' names: the engine applies styles, as A1111 does at generation."""
        return {"prompt": data[self.prompt] or "", "negative_prompt": data[self.negative_prompt] or "",
                "styles": list(data[self.styles] or [])}

    @property
    def inputs(self) -> set:
        return {self.prompt, self.negative_prompt, self.styles}


def build_toprow(ctx: UIContext, tab: str) -> Toprow:
    engine = ctx.engine
    with gr.Row(elem_id=f"{tab}_toprow", elem_classes=["toprow"], equal_height=False):
        with gr.Column(scale=8, elem_classes=["prompts"]):
            with gr.Column(elem_classes=["prompt-wrap"]):
                prompt = ctx.add(tab, "Prompt", gr.Textbox, value="", lines=3, max_lines=12, show_label=False,
                                 placeholder="Prompt\n(Ctrl+Enter to generate, Esc to interrupt)",
                                 elem_id=f"{tab}_prompt")
                prompt_count = gr.HTML(counter_html(engine, ""), elem_id=f"{tab}_token_counter",
                                       elem_classes=["token-counter-box"])
            with gr.Column(elem_classes=["prompt-wrap"]):
                negative = ctx.add(tab, "Negative prompt", gr.Textbox, value="", lines=2, max_lines=8,
                                   show_label=False, placeholder="Negative prompt",
                                   elem_id=f"{tab}_neg_prompt")
                negative_count = gr.HTML(counter_html(engine, ""), elem_id=f"{tab}_negative_token_counter",
                                         elem_classes=["token-counter-box"])
        with gr.Column(scale=2, min_width=220, elem_classes=["actions"]):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate", size="lg")
            with gr.Row(elem_classes=["running-buttons"]):
                interrupt = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", visible=False, variant="stop")
                skip = gr.Button("Skip", elem_id=f"{tab}_skip", visible=False)
            with gr.Row(elem_classes=["style-row"]):
                styles = gr.Dropdown(choices=ctx.styles.names(), value=[], multiselect=True, label="Styles",
                                     elem_id=f"{tab}_styles", scale=4, min_width=120)
                apply_styles = tool_button("clipboard", f"{tab}_style_apply")
                edit_styles = tool_button("pencil", f"{tab}_style_edit")
    editor = _build_style_editor(ctx, tab)

    styles.focus(lambda: gr.update(choices=ctx.styles.names()), None, styles, queue=False, show_progress="hidden")

    def apply_selected(text: str, neg: str, names: list[str]):
        text, neg = ctx.styles.apply(text or "", neg or "", names or [])
        return text, neg, []

    apply_styles.click(apply_selected, [prompt, negative, styles], [prompt, negative, styles], queue=False)
    edit_styles.click(lambda: gr.update(open=True, visible=True), None, editor.accordion, queue=False)
    editor.wire(ctx, prompt, negative, styles)
    return Toprow(tab, prompt, negative, prompt_count, negative_count, generate, interrupt, skip, styles)


@dataclass
class _StyleEditor:
    accordion: Any
    name: Any
    prompt: Any
    negative: Any
    copy: Any
    save: Any
    delete: Any
    status: Any

    def wire(self, ctx: UIContext, prompt, negative, styles) -> None:
        store = ctx.styles

        def load(name: str):
            style_prompt, style_negative = store.get(name or "")
            return style_prompt, style_negative

        def save(name: str, text: str, neg: str):
            try:
                store.save(name or "", text or "", neg or "")
            except (OSError, ValueError) as e:
                return error_html(f"Style not saved: {e}"), gr.update(), gr.update()
            names = store.names()
            return (note_html(f"Saved style '{name.strip()}' to {store.path.name}."),
                    gr.update(choices=names, value=name.strip()), gr.update(choices=names))

        def delete(name: str, selected: list[str]):
            removed = store.delete(name or "")
            names = store.names()
            message = f"Deleted style '{name}'." if removed else f"No style named '{name}'."
            return (note_html(message), gr.update(choices=names, value=None),
                    gr.update(choices=names, value=[s for s in (selected or []) if s in names]))

        self.name.focus(lambda: gr.update(choices=store.names()), None, self.name, queue=False,
                        show_progress="hidden")
        self.name.input(load, self.name, [self.prompt, self.negative], queue=False)
        self.copy.click(lambda a, b: (a, b), [prompt, negative], [self.prompt, self.negative], queue=False)
        self.save.click(save, [self.name, self.prompt, self.negative], [self.status, self.name, styles])
        self.delete.click(delete, [self.name, styles], [self.status, self.name, styles])


def _build_style_editor(ctx: UIContext, tab: str) -> _StyleEditor:
    with gr.Accordion("Style editor", open=False, visible=False, elem_id=f"{tab}_style_editor") as accordion:
        with gr.Row():
            name = gr.Dropdown(choices=ctx.styles.names(), value=None, allow_custom_value=True, label="Style name",
                               elem_id=f"{tab}_style_name", scale=3)
            copy = gr.Button("Copy from prompt", scale=1, size="sm")
            save = gr.Button("Save", variant="primary", scale=1, size="sm", elem_id=f"{tab}_style_save")
            delete = gr.Button("Delete", variant="stop", scale=1, size="sm")
        with gr.Row():
            style_prompt = gr.Textbox(label="Style prompt", lines=2, placeholder="Use {prompt} to place the prompt")
            style_negative = gr.Textbox(label="Style negative prompt", lines=2)
        status = gr.HTML(f'<div class="atelier-note">Styles live in {esc(ctx.styles.path.name)}.</div>')
    return _StyleEditor(accordion, name, style_prompt, style_negative, copy, save, delete, status)
