"""Example Atelier extension: writes a note into every image's infotext.

It shows the pieces most extensions need: an always-on script with typed API arguments and a UI,
a setting, and an HTTP route. docs/extensions.md walks through it.
"""
from modules import extension_api as api

# A setting, shown under "Infotext note" in the Settings tab and saved in config.json.
api.register_settings("Infotext note", {
    "infotext_note_default": api.setting("", "Note written into every infotext when the request gives none"),
})

recent_notes: list[str] = []


class InfotextNote(api.Script):
    # The script's arguments for API clients: alwayson_scripts: {"infotext note": {"args": {"text": "..."}}}
    api_args = [api.ScriptArg(label="Note", value="", name="text")]

    def title(self):
        return "Infotext note"

    def show(self, is_img2img):
        return api.AlwaysVisible  # runs in every job, on both tabs

    def ui(self, is_img2img):
        import gradio as gr  # only the UI needs Gradio

        with gr.Accordion("Infotext note", open=False):
            text = gr.Textbox(label="Note", placeholder="written into the infotext")
        return [text]  # its value arrives as `text` below

    def process(self, p, text=""):
        text = text or api.get_setting("infotext_note_default")
        if text:
            p.extra_generation_params["Note"] = text
            recent_notes.append(text)
            del recent_notes[:-10]


def add_routes(demo, app):
    @app.get("/example-extension/v1/notes")
    def notes():
        return {"notes": list(recent_notes)}


api.on_app_started(add_routes)
