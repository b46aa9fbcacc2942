"""The Checkpoint Merger tab (A1111's): A, B, C, method, multiplier, precision, custom name, bake-in VAE, discard
weights. Merge runs modules/merging.merge_by_name in the handler's own thread (it streams tensors to a file and
never touches the loaded model, so it does not go through the job queue), shows the new file or the error, and
refreshes the checkpoint dropdowns (this tab's and the quicksettings one).
"""
from __future__ import annotations

from typing import Any, Optional

import gradio as gr

from modules import merging
from modules.ui.common import UIContext, error_html, esc, note_html, to_float, tool_button, user_message

PRECISIONS = ("fp16", "bf16", "fp32", "keep")


def checkpoint_names(ctx: UIContext) -> list[str]:
    return [item.name for item in ctx.engine.models.checkpoints.items]


def vae_names(ctx: UIContext) -> list[str]:
    return ["None", *(item.name for item in ctx.engine.models.vaes.items)]


def run_merge(ctx: UIContext, primary: Optional[str], secondary: Optional[str], tertiary: Optional[str],
              method: str, multiplier: Any, precision: str, custom_name: str, bake_in_vae: Optional[str],
              discard_weights: str, save_metadata: bool = True) -> str:
    """Merge and return the message to show (the new file, or what went wrong)."""
    try:
        result = merging.merge_by_name(
            ctx.engine.models, primary or "", secondary or "", tertiary or "", interp_method=method,
            multiplier=to_float(multiplier, 0.0, 1.0, 0.3), custom_name=(custom_name or "").strip(),
            bake_in_vae=bake_in_vae or "None", discard_weights=discard_weights or "", save_metadata=save_metadata,
            precision=precision or "fp16")
    except Exception as e:  # wrong models, bad regex, disk full: say so, keep the tab usable
        return error_html(user_message(e))
    notes = "".join(f"<br>{esc(n)}" for n in result.notes)
    return note_html(f"Saved {result.path} ({result.merged_keys} merged, {result.copied_keys} copied, "
                     f"{result.discarded_keys} discarded, {result.seconds:.1f} s)") + notes


def build(ctx: UIContext, quick_checkpoint: Any = None) -> None:
    names = checkpoint_names(ctx)
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("A merger of the checkpoints you choose. The result is written to the checkpoint folder.")
            with gr.Row():
                primary = gr.Dropdown(label="Primary model (A)", choices=names, value=None,
                                      elem_id="modelmerger_primary_model_name")
                secondary = gr.Dropdown(label="Secondary model (B)", choices=names, value=None,
                                        elem_id="modelmerger_secondary_model_name")
                tertiary = gr.Dropdown(label="Tertiary model (C)", choices=names, value=None,
                                       elem_id="modelmerger_tertiary_model_name")
                refresh = tool_button("refresh", "modelmerger_refresh")
            custom_name = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
            multiplier = gr.Slider(label="Multiplier (M) - set to 0 to get model A", minimum=0.0, maximum=1.0,
                                   step=0.05, value=0.3, elem_id="modelmerger_interp_amount")
            method = gr.Radio(label="Interpolation Method", choices=list(merging.INTERP_METHODS),
                              value="Weighted sum", elem_id="modelmerger_interp_method")
            gr.Markdown("Weighted sum: A × (1 − M) + B × M. Add difference: A + (B − C) × M. "
                        "No interpolation: A alone (to change its precision, bake in a VAE or discard weights).")
            with gr.Row():
                precision = gr.Radio(label="Precision", choices=list(PRECISIONS), value="fp16",
                                     elem_id="modelmerger_precision")
                save_metadata = gr.Checkbox(label="Save metadata", value=True, elem_id="modelmerger_save_metadata")
            with gr.Row():
                bake_in_vae = gr.Dropdown(label="Bake in VAE", choices=vae_names(ctx), value="None",
                                          elem_id="modelmerger_bake_in_vae")
                discard = gr.Textbox(label="Discard weights with matching name (regular expression)",
                                     elem_id="modelmerger_discard_weights")
            merge = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
        with gr.Column():
            result = gr.HTML("", elem_id="modelmerger_result")

    def refreshed() -> list:
        ctx.engine.models.refresh()
        choices = checkpoint_names(ctx)
        return [gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices),
                gr.update(choices=vae_names(ctx))]

    dropdowns = [primary, secondary, tertiary, bake_in_vae]
    refresh.click(refreshed, None, dropdowns)

    def on_merge(*values: Any) -> list:
        message = run_merge(ctx, *values)
        updates = [message, *refreshed()]
        if quick_checkpoint is not None:
            from modules.ui.quicksettings import checkpoint_choices
            updates.append(gr.update(choices=checkpoint_choices(ctx)))
        return updates

    outputs = [result, *dropdowns] + ([quick_checkpoint] if quick_checkpoint is not None else [])
    merge.click(on_merge, [primary, secondary, tertiary, method, multiplier, precision, custom_name, bake_in_vae,
                           discard, save_metadata], outputs, concurrency_limit=1)
