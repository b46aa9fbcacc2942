"""A1111's `modules.ui_components`, the import path community extensions use: a re-export of
modules/ui/a1111_components.py, where the Gradio code lives (the core outside modules/ui imports no gradio)."""
from modules.ui.a1111_components import (DropdownEditable, DropdownMulti, FormColorPicker, FormColumn, FormComponent,
                                         FormGroup, FormHTML, FormRow, InputAccordion, ResizeHandleRow, ToolButton)

__all__ = ["DropdownEditable", "DropdownMulti", "FormColorPicker", "FormColumn", "FormComponent", "FormGroup",
           "FormHTML", "FormRow", "InputAccordion", "ResizeHandleRow", "ToolButton"]
