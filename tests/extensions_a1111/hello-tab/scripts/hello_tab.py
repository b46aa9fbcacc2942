import gradio as gr

from modules import script_callbacks, shared


def on_ui_settings():
    section = ("hello-tab", "Hello tab")
    shared.opts.add_option("hello_tab_greeting", shared.OptionInfo(
        "Hello", "Greeting shown in the Hello tab", section=section).info("any text"))
    shared.opts.add_option("hello_tab_repeat", shared.OptionInfo(
        2, "How many times to greet", gr.Slider, {"minimum": 1, "maximum": 5, "step": 1}, section=section))


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as hello_tab:
        gr.Markdown(" ".join([shared.opts.hello_tab_greeting] * shared.opts.hello_tab_repeat),
                    elem_id="hello_tab_text")
    return [(hello_tab, "Hello", "hello_tab")]


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_ui_tabs(on_ui_tabs)
