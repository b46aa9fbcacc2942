"""A1111's ui_components (extensions import them as `modules.ui_components`, which re-exports this): small Gradio
subclasses that only set how a block looks or behaves (a row, a small tool button, a multiselect dropdown) and
`InputAccordion`, an accordion whose open state is a script argument.

Each subclass names the Gradio block the browser draws (`get_block_name`): without it Gradio would look for a
front-end component named after the class ("formrow") and find none.
"""
from __future__ import annotations

import itertools
from typing import Any

import gradio as gr
from gradio.component_meta import ComponentMeta, updateable
from gradio.context import get_blocks_context

__all__ = ["DropdownEditable", "DropdownMulti", "FormColorPicker", "FormColumn", "FormComponent", "FormGroup",
           "FormHTML", "FormRow", "InputAccordion", "ResizeHandleRow", "ToolButton"]


class _NoStubFiles(ComponentMeta):
    """Gradio's metaclass, minus one step: for every component subclass Gradio writes a `.pyi` stub beside the
    file that defines it (a convenience for Gradio's own sources). Here that would write into modules/, so it is
    skipped. Subclasses below add no events, so nothing else of that step is needed."""

    def __new__(mcs, name: str, bases: tuple, attrs: dict) -> Any:
        if "__init__" in attrs:
            attrs["__init__"] = updateable(attrs["__init__"])  # what Gradio does for every component __init__
        return super(ComponentMeta, mcs).__new__(mcs, name, bases, attrs)


class FormComponent:
    """Marks A1111's components that fit inside Gradio forms."""


class ToolButton(gr.Button, FormComponent, metaclass=_NoStubFiles):
    """A small button holding one emoji or symbol."""

    def __init__(self, value: str = "", *args: Any, elem_classes: Any = None, **kwargs: Any):
        classes = [elem_classes] if isinstance(elem_classes, str) else list(elem_classes or [])
        kwargs.pop("tooltip", None)  # A1111 patched Gradio to take one; Gradio's Button has none
        kwargs.setdefault("scale", 0)
        kwargs.setdefault("min_width", 40)
        super().__init__(value, *args, elem_classes=["tool", *classes], **kwargs)

    def get_block_name(self) -> str:
        return "button"


class ResizeHandleRow(gr.Row, metaclass=_NoStubFiles):
    """A row (A1111 lets the artist drag its split; here it is a plain row with A1111's class)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.elem_classes = [*(self.elem_classes or []), "resize-handle-row"]

    def get_block_name(self) -> str:
        return "row"


class FormRow(gr.Row, FormComponent, metaclass=_NoStubFiles):
    def get_block_name(self) -> str:
        return "row"


class FormColumn(gr.Column, FormComponent, metaclass=_NoStubFiles):
    def get_block_name(self) -> str:
        return "column"


class FormGroup(gr.Group, FormComponent, metaclass=_NoStubFiles):
    def get_block_name(self) -> str:
        return "group"


class FormHTML(gr.HTML, FormComponent, metaclass=_NoStubFiles):
    def get_block_name(self) -> str:
        return "html"


class FormColorPicker(gr.ColorPicker, FormComponent, metaclass=_NoStubFiles):
    def get_block_name(self) -> str:
        return "colorpicker"


class DropdownMulti(gr.Dropdown, FormComponent, metaclass=_NoStubFiles):
    """A dropdown that always allows several choices."""

    def __init__(self, **kwargs: Any):
        super().__init__(**{**kwargs, "multiselect": True})

    def get_block_name(self) -> str:
        return "dropdown"


class DropdownEditable(gr.Dropdown, FormComponent, metaclass=_NoStubFiles):
    """A dropdown that also takes typed values."""

    def __init__(self, **kwargs: Any):
        super().__init__(**{**kwargs, "allow_custom_value": True})

    def get_block_name(self) -> str:
        return "dropdown"


_accordion_ids = itertools.count()


class InputAccordion(gr.Checkbox, metaclass=_NoStubFiles):
    """An accordion that is an input: True while open. As in A1111 it is really a checkbox (the value a script
    gets), kept hidden, with an accordion beside it; opening or closing the accordion sets the checkbox and
    setting the checkbox (pasting, an API default) opens or closes the accordion.

        with InputAccordion(False, label="My feature") as enabled:
            strength = gr.Slider(...)
        return [enabled, strength]
    """

    def __init__(self, value: Any = False, **kwargs: Any):
        self.accordion_id = kwargs.get("elem_id") or f"input-accordion-{next(_accordion_ids)}"
        super().__init__(value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": "hidden"})
        self.accordion = gr.Accordion(label=kwargs.get("label") or "Accordion", open=bool(value),
                                      elem_id=self.accordion_id, elem_classes=["input-accordion"],
                                      visible=kwargs.get("visible", True))
        if get_blocks_context() is not None:  # events can only be attached inside a gr.Blocks
            self.change(lambda checked: gr.update(open=bool(checked)), self, self.accordion, queue=False,
                        show_progress="hidden")
            self.accordion.expand(lambda: True, None, self, queue=False, show_progress="hidden")
            self.accordion.collapse(lambda: False, None, self, queue=False, show_progress="hidden")

    def extra(self) -> gr.Column:
        """A column for small controls next to the accordion's content (A1111 puts it in the label)."""
        return gr.Column(elem_id=f"{self.accordion_id}-extra", elem_classes=["input-accordion-extra"], min_width=0)

    def __enter__(self) -> "InputAccordion":
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.accordion.__exit__(*exc)

    def get_block_name(self) -> str:
        return "checkbox"
