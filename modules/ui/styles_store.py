"""Prompt styles for the UI: a thin adapter over modules.styles.StyleDatabase (A1111's styles.csv).

Generation requests carry the selected style names (`request.styles`); the engine applies them. The UI
itself only lists, edits and saves styles, and applies them into the prompt box on the 📋 button.
"""
from __future__ import annotations

from pathlib import Path

from modules.styles import StyleDatabase


class StyleStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = StyleDatabase(self.path)

    def names(self) -> list[str]:
        return self.db.names()

    def get(self, name: str) -> tuple[str, str]:
        style = self.db.get(name)
        return style.prompt, style.negative_prompt

    def apply(self, prompt: str, negative: str, names: list[str]) -> tuple[str, str]:
        return self.db.apply_styles_to_prompt(prompt, names), self.db.apply_negative_styles_to_prompt(negative, names)

    def save(self, name: str, prompt: str, negative: str) -> None:
        name = name.strip()
        if not name:
            raise ValueError("a style needs a name")
        self.db.set(name, prompt, negative)
        self.db.save_styles()

    def delete(self, name: str) -> bool:
        if not self.db.delete(name):
            return False
        self.db.save_styles()
        return True
