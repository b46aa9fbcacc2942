"""The quicksettings row: checkpoint (+ refresh), VAE, Clip skip. Saved to config.json as A1111 does.

A checkpoint change loads the model in a background thread while this handler reports its progress, so the
other tabs stay responsive; a failed load keeps the previous model and says why.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import gradio as gr

from modules.model_manager import VAE_AUTOMATIC, VAE_NONE
from modules.ui.common import UIContext, error_html, esc, note_html, tool_button, user_message


@dataclass
class QuickSettings:
    checkpoint: Any
    refresh: Any
    vae: Any
    clip_skip: Any
    status: Any


def checkpoint_choices(ctx: UIContext) -> list[tuple[str, str]]:
    return [(item.title, item.name) for item in ctx.engine.models.checkpoints.items]


def selected_checkpoint(ctx: UIContext) -> Optional[str]:
    models = ctx.engine.models
    wanted = ctx.settings.get("sd_model_checkpoint")
    found = models.checkpoints.find(wanted) if wanted else None
    found = found or models.current_file or models.default_checkpoint()
    return found.name if found else None


def vae_choices(ctx: UIContext) -> list[str]:
    return [VAE_AUTOMATIC, VAE_NONE, *(item.name for item in ctx.engine.models.vaes.items)]


def _loaded_text(ctx: UIContext) -> str:
    model, file = ctx.engine.models.current, ctx.engine.models.current_file
    if model is None or file is None:
        return ""
    return f'<span class="quick-status">Loaded: {esc(file.name)} ({esc(model.family.label)})</span>'


def build(ctx: UIContext) -> QuickSettings:
    with gr.Row(elem_id="quicksettings", elem_classes=["quicksettings"], equal_height=True):
        checkpoint = gr.Dropdown(choices=checkpoint_choices(ctx), value=selected_checkpoint(ctx),
                                 label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint",
                                 scale=4, min_width=260)
        refresh = tool_button("refresh", "refresh_sd_model_checkpoint")
        vae = gr.Dropdown(choices=vae_choices(ctx), value=ctx.settings.get("sd_vae") or VAE_AUTOMATIC, label="SD VAE",
                          elem_id="setting_sd_vae", scale=2, min_width=160)
        clip_skip = gr.Slider(minimum=1, maximum=12, step=1, value=int(ctx.settings.get("CLIP_stop_at_last_layers")),
                              label="Clip skip", elem_id="setting_CLIP_stop_at_last_layers", scale=2, min_width=160)
        status = gr.HTML(_loaded_text(ctx), elem_id="quicksettings_status", scale=3, min_width=240)
    qs = QuickSettings(checkpoint, refresh, vae, clip_skip, status)
    _wire(ctx, qs)
    return qs


def _in_thread(work) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        try:
            work()
        except Exception as e:  # reported to the artist below
            outcome["error"] = e

    thread = threading.Thread(target=target, name="atelier-ui-load", daemon=True)
    thread.start()
    return thread, outcome


def _wire(ctx: UIContext, qs: QuickSettings) -> None:
    engine = ctx.engine

    def change_checkpoint(name: Optional[str]) -> Iterator[Any]:
        if not name:
            return
        previous = ctx.settings.get("sd_model_checkpoint")
        started = time.monotonic()
        thread, outcome = _in_thread(lambda: engine.models.get(name, ctx.settings.get("sd_vae")))
        while thread.is_alive():
            yield gr.update(), note_html(f"Loading {name}… {time.monotonic() - started:.0f} s")
            thread.join(0.5)
        if "error" in outcome:
            yield previous or gr.update(), error_html(f"{name} was not loaded: {user_message(outcome['error'])}")
            return
        ctx.settings.set("sd_model_checkpoint", name)
        yield gr.update(), _loaded_text(ctx) or note_html(f"Selected {name}")

    def change_vae(choice: str) -> Any:
        previous = ctx.settings.get("sd_vae")
        try:
            if engine.models.current is not None:  # otherwise the next job applies it when it loads a model
                engine.models.get(None, choice)
        except Exception as e:
            return previous, error_html(f"VAE {choice} was not applied: {user_message(e)}")
        ctx.settings.set("sd_vae", choice)
        return gr.update(), _loaded_text(ctx) or note_html(f"VAE: {choice}")

    def change_clip_skip(value: float) -> None:
        ctx.settings.set("CLIP_stop_at_last_layers", int(value))

    def refresh() -> tuple:
        engine.models.refresh()
        return gr.update(choices=checkpoint_choices(ctx), value=selected_checkpoint(ctx)), \
            gr.update(choices=vae_choices(ctx))

    qs.checkpoint.input(change_checkpoint, qs.checkpoint, [qs.checkpoint, qs.status], concurrency_limit=1,
                        trigger_mode="always_last", show_progress="hidden")
    qs.vae.input(change_vae, qs.vae, [qs.vae, qs.status], concurrency_limit=1, show_progress="hidden")
    qs.clip_skip.input(change_clip_skip, qs.clip_skip, None, queue=False, show_progress="hidden",
                       trigger_mode="always_last")
    qs.refresh.click(refresh, None, [qs.checkpoint, qs.vae], queue=False)
    ctx.on_load(lambda: {
        qs.checkpoint: gr.update(choices=checkpoint_choices(ctx), value=selected_checkpoint(ctx)),
        qs.vae: gr.update(choices=vae_choices(ctx), value=ctx.settings.get("sd_vae") or VAE_AUTOMATIC),
        qs.clip_skip: int(ctx.settings.get("CLIP_stop_at_last_layers")),
        qs.status: _loaded_text(ctx),
    })
