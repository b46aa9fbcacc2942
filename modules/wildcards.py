"""Dynamic prompts: `{a|b|c}` variants and `__name__` wildcards from text files, one choice per image.

Expansion uses the `dynamicprompts` library (the engine behind A1111's sd-dynamic-prompts extension), so
its whole syntax works: `{2$$a|b|c}`, `{0.5::a|b}`, `__folder/name__`, `${var=...}`. Each image draws with
its own seed, so image *i* of a batch gets the same prompt as a single run with that seed. Only prompts
that contain `{` or a `__name__` are touched; in those, dynamicprompts also treats `#`, `//` and `/* */` as
comments.

Wildcard files live in `<data dir>/wildcards/`: `color.txt` with one value per line is `__color__`.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

_wildcard_ref = re.compile(r"__([^_\s{}|][^\s{}|]*?)__")


def has_dynamic_syntax(text: str) -> bool:
    return "{" in text or _wildcard_ref.search(text) is not None


class Wildcards:
    def __init__(self, folder: Optional[Path] = None):
        self.folder = Path(folder) if folder is not None else None
        self._manager = None

    def _wildcard_manager(self):
        if self._manager is None:
            from dynamicprompts.wildcards import WildcardManager

            self._manager = WildcardManager(self.folder)
        return self._manager

    def expand(self, text: str, seed: int, warnings: Optional[list[str]] = None) -> str:
        """The prompt with every variant and wildcard chosen by `seed`; on a syntax error, the text as it is."""
        if not has_dynamic_syntax(text):
            return text
        from dynamicprompts.generators import RandomPromptGenerator

        manager = self._wildcard_manager()
        for name in dict.fromkeys(_wildcard_ref.findall(text)):
            if "*" not in name and not manager.get_values(name).items:
                _warn(warnings, f"wildcard __{name}__ not found"
                                + (f" in {self.folder}" if self.folder else " (no wildcards folder)"))
        try:
            generated = RandomPromptGenerator(wildcard_manager=manager, seed=seed).generate(text, 1)
        except Exception as e:  # dynamicprompts raises pyparsing's and its own errors for bad syntax
            _warn(warnings, f"dynamic prompt syntax not understood, the prompt is used as written: {e}")
            return text
        return generated[0] if generated else ""


def _warn(warnings: Optional[list[str]], message: str) -> None:
    log.warning(message)
    if warnings is not None and message not in warnings:
        warnings.append(message)
