"""The Gradio UI (filled in by the web UI issue)."""
from __future__ import annotations


def build_ui(engine, args):
    import gradio as gr

    with gr.Blocks(title="Atelier") as blocks:
        gr.Markdown("# Atelier\nThe web UI is being built; the HTTP API is at /docs with --api.")
    return blocks
