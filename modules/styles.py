"""Prompt styles in A1111's styles.csv (columns name, prompt, negative_prompt), with A1111's rules.

Applying a style: a `{prompt}` in the style's text is replaced by the prompt; otherwise the style's text
is appended after ", ". Styles apply in the order given. `extract_styles_from_prompt` undoes that for a
pasted infotext: it finds styles whose text wraps or ends the prompt (and negative prompt) and strips them.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

log = logging.getLogger(__name__)

FIELDS = ("name", "prompt", "negative_prompt")


class PromptStyle(NamedTuple):
    name: str
    prompt: str
    negative_prompt: str
    path: Optional[str] = None  # the file it came from


def merge_prompts(style_prompt: str, prompt: str) -> str:
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_prompts: Sequence[str]) -> str:
    for style_prompt in style_prompts:
        prompt = merge_prompts(style_prompt, prompt)
    return prompt


def extract_style_text_from_prompt(style_text: str, prompt: str) -> tuple[bool, str]:
    """(matched, prompt without the style's text).

    >>> extract_style_text_from_prompt("masterpiece", "1girl, art by greg, masterpiece")
    (True, '1girl, art by greg')
    >>> extract_style_text_from_prompt("masterpiece, {prompt}", "exquisite, 1girl")
    (False, 'exquisite, 1girl')
    """
    stripped_prompt, stripped_style = prompt.strip(), style_text.strip()
    if "{prompt}" in stripped_style:
        parts = stripped_style.split("{prompt}")
        if len(parts) != 2:  # two placeholders: there is no single way to unwrap it
            return False, prompt
        left, right = parts
        if stripped_prompt.startswith(left) and stripped_prompt.endswith(right):
            return True, stripped_prompt[len(left):len(stripped_prompt) - len(right)]
    elif stripped_prompt.endswith(stripped_style):
        rest = stripped_prompt[:len(stripped_prompt) - len(stripped_style)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


def extract_original_prompts(style: PromptStyle, prompt: str, negative_prompt: str) -> tuple[bool, str, str]:
    if not style.prompt and not style.negative_prompt:
        return False, prompt, negative_prompt
    matched, positive = extract_style_text_from_prompt(style.prompt, prompt)
    if not matched:
        return False, prompt, negative_prompt
    matched, negative = extract_style_text_from_prompt(style.negative_prompt, negative_prompt)
    if not matched:
        return False, prompt, negative_prompt
    return True, positive, negative


class StyleDatabase:
    """The styles of one styles.csv. Saving is atomic and keeps the previous file as styles.csv.bak."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.styles: dict[str, PromptStyle] = {}
        self.no_style = PromptStyle("None", "", "")
        self._lock = threading.RLock()
        self.reload()

    def reload(self) -> None:
        with self._lock:
            self.styles.clear()
            if not self.path.is_file():
                return
            try:
                with open(self.path, encoding="utf-8-sig", newline="") as file:
                    for row in csv.DictReader(file, skipinitialspace=True):
                        name = row.get("name")
                        if not name or name.startswith("#"):  # blank rows and comment rows
                            continue
                        prompt = row["prompt"] if "prompt" in row else row.get("text", "")  # old "name, text" files
                        self.styles[name] = PromptStyle(name, prompt or "", row.get("negative_prompt") or "",
                                                        str(self.path))
            except (OSError, csv.Error, UnicodeDecodeError) as e:
                log.error("could not read styles from %s: %s", self.path, e)

    def get(self, name: str) -> PromptStyle:
        return self.styles.get(name, self.no_style)

    def names(self) -> list[str]:
        return list(self.styles)

    def get_style_prompts(self, styles: Sequence[str]) -> list[str]:
        return [self.get(name).prompt for name in styles]

    def get_negative_style_prompts(self, styles: Sequence[str]) -> list[str]:
        return [self.get(name).negative_prompt for name in styles]

    def apply_styles_to_prompt(self, prompt: str, styles: Sequence[str]) -> str:
        return apply_styles_to_prompt(prompt, self.get_style_prompts(styles))

    def apply_negative_styles_to_prompt(self, prompt: str, styles: Sequence[str]) -> str:
        return apply_styles_to_prompt(prompt, self.get_negative_style_prompts(styles))

    def unknown(self, styles: Sequence[str]) -> list[str]:
        return [name for name in styles if name not in self.styles]

    def set(self, name: str, prompt: str, negative_prompt: str) -> None:
        with self._lock:
            self.styles[name] = PromptStyle(name, prompt, negative_prompt, str(self.path))

    def delete(self, name: str) -> bool:
        with self._lock:
            return self.styles.pop(name, None) is not None

    def save_styles(self, path: Optional[Path | str] = None) -> None:
        """Write every style to `path` (default: the file they were read from)."""
        target = Path(path) if path is not None else self.path
        with self._lock:
            rows = [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                    for s in self.styles.values() if s.prompt is not None]
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as file:
                    writer = csv.DictWriter(file, fieldnames=FIELDS)
                    writer.writeheader()
                    writer.writerows(rows)
                    file.flush()
                    os.fsync(file.fileno())
                if target.exists():
                    shutil.copyfile(target, target.with_name(target.name + ".bak"))
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def extract_styles_from_prompt(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """(style names found, prompt and negative prompt with them removed). Names come back in the order
        that re-applying them rebuilds the prompts."""
        extracted: list[str] = []
        candidates = list(self.styles.values())
        while True:
            for style in candidates:
                matched, new_prompt, new_negative = extract_original_prompts(style, prompt, negative_prompt)
                if matched:
                    prompt, negative_prompt = new_prompt, new_negative
                    candidates.remove(style)
                    extracted.append(style.name)
                    break
            else:
                break
        return list(reversed(extracted)), prompt, negative_prompt
