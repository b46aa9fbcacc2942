"""Prompt syntax as A1111 reads it. Pure text in, text out: no torch, no model.

- Emphasis: `(a)` ×1.1, `[a]` ÷1.1, `(a:1.3)`, `\\(` `\\)` `\\[` `\\]` escapes, unclosed brackets apply to the
  rest of the prompt, `BREAK` starts a new 75-token chunk (`parse_prompt_attention`).
- Prompt editing `[from:to:when]`, `[to:when]`, `[from::when]` and alternation `[a|b|c]`
  (`parse_prompt_schedule`). `when` with a decimal point is a fraction of the steps, without one a step
  number (A1111 ≥ 1.6); in the hires pass fractions 1..2 and step numbers past the first pass address it.
- Composable diffusion: `a cat :1.2 AND a dog :0.8` (`split_and`).
- Comments: `#` to the end of a line (`strip_comments`).

The scheduling parser accepts exactly the prompts A1111's grammar accepts, with the same result, except
for one kind of input: an edit that sits among stray, unmatched brackets at the top level ("[a:b:5]))").
A1111's ambiguous Earley grammar then reads the edit as plain text or not depending on the brackets around
it; this parser always reads the edit. It is hand-written because the Earley parse takes about a second on
a long prompt. A prompt it can't read raises `PromptSyntaxError`; `prompt_schedules` then uses the text as
it stands, with a warning, as A1111 does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from modules.errors import PromptSyntaxError

ROUND, SQUARE = 1.1, 1 / 1.1
MAX_NESTING = 200  # deeper bracket nesting is refused (A1111's recursive transformer overflows sooner)

# ---------------------------------------------------------------------------------------------- emphasis

_attention = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:
""", re.X)
_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] with runs of equal weight merged; BREAK comes out as ("BREAK", -1).

    >>> parse_prompt_attention('an (important) word')
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    result: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for item in result[start:]:
            item[1] *= factor

    for match in _attention.finditer(text):
        token, weight = match.group(0), match.group(1)
        if weight is not None and not _is_number(weight):  # "(a:1.2.3)": A1111 crashes; read it as "(a:b)"
            result.append([token[:-1].rstrip(), 1.0])
            token, weight = ")", None
        if token.startswith("\\"):
            result.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(result))
        elif token == "[":
            square_open.append(len(result))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale_from(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_break.split(token)):
                if i > 0:
                    result.append(["BREAK", -1.0])
                result.append([part, 1.0])
    for start in round_open:
        scale_from(start, ROUND)
    for start in square_open:
        scale_from(start, SQUARE)

    if not result:
        return [("", 1.0)]
    merged: list[list] = [result[0]]
    for piece in result[1:]:  # A1111 merges any equal neighbours, BREAK markers included
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, w) for t, w in merged]


# ---------------------------------------------------------------------------------------------- AND

_and = re.compile(r"\bAND\b")
_part_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Composable diffusion parts: "a cat :1.2 AND a dog" → [("a cat", 1.2), ("a dog", 1.0)]."""
    parts = []
    for part in _and.split(prompt):
        match = _part_weight.search(part)
        text, weight = match.groups() if match else (part, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


# ---------------------------------------------------------------------------------------------- comments

_comment_line = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_comment_tail = re.compile(r"#[^\n]*(\n|$)")


def strip_comments(text: str) -> str:
    """Drop `#` comments: whole lines, then the rest of a line after `#` (A1111's two rules, in order)."""
    return _comment_tail.sub("\n", _comment_line.sub("\n", text))


# ---------------------------------------------------------------------------------------------- editing

@dataclass
class Edit:
    """`[before:after:when]`; before is None for `[after:when]`."""

    before: Optional[list["Node"]]
    after: list["Node"]
    when: str  # the number as written: a decimal point makes it a fraction


@dataclass
class Alternation:
    options: list[list["Node"]]


Node = Union[str, Edit, Alternation]

_number = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))\s*]")


class _Parser:
    """Recursive descent over A1111's prompt language.

    Inside a construct every bracket must belong to a nested construct; at the top level a bracket or
    colon that starts no complete construct is plain text. A construct's extent doesn't depend on what
    surrounds it, so results are memoised by position and parsing stays linear.
    """

    def __init__(self, text: str):
        self.text = text
        self.memo: dict[int, Optional[tuple[list[Node], int]]] = {}

    def top(self) -> list[Node]:
        text, out, pos = self.text, [], 0
        while pos < len(text):
            char = text[pos]
            if char in "([":
                found = self.construct(pos, 0)
                if found is not None:
                    out.extend(found[0])
                    pos = found[1]
                    continue
                out.append(char)
                pos += 1
            elif char in ")]:":
                out.append(char)
                pos += 1
            else:
                pos = self.plain(pos, out)
        return out

    def plain(self, pos: int, out: list[Node]) -> int:
        """Text up to the next bracket, colon or bar; a backslash escapes any one character but a newline."""
        text, start = self.text, pos
        while pos < len(text) and text[pos] not in "()[]:|":
            if text[pos] == "\\":
                if pos + 1 >= len(text) or text[pos + 1] == "\n":
                    raise PromptSyntaxError(f"a backslash at character {pos + 1} escapes nothing")
                pos += 1
            pos += 1
        if pos == start:  # only `|` stops plain text at its start
            raise PromptSyntaxError(f"'|' at character {pos + 1} is outside [a|b] alternation")
        out.append(text[start:pos])
        return pos

    def prompt(self, pos: int, depth: int) -> Optional[tuple[list[Node], int]]:
        """Nodes up to the next `)`, `]`, `:` or `|` of this level; None when a nested bracket doesn't close."""
        text, out = self.text, []
        while pos < len(text) and text[pos] not in ")]:|":
            if text[pos] in "([":
                found = self.construct(pos, depth + 1)
                if found is None:
                    return None
                out.extend(found[0])
                pos = found[1]
            else:
                pos = self.plain(pos, out)
        return out, pos

    def construct(self, pos: int, depth: int) -> Optional[tuple[list[Node], int]]:
        if depth > MAX_NESTING:
            raise PromptSyntaxError(f"brackets nest more than {MAX_NESTING} deep")
        if pos not in self.memo:
            self.memo[pos] = self._construct(pos, depth)
        return self.memo[pos]

    def _construct(self, pos: int, depth: int) -> Optional[tuple[list[Node], int]]:
        text = self.text
        first = self.prompt(pos + 1, depth)
        if first is None:
            return None
        inner, end = first
        closing = text[end] if end < len(text) else ""
        if text[pos] == "(":  # (a) or (a:b): emphasis stays as text for parse_prompt_attention
            if closing == ")":
                return ["(", *inner, ")"], end + 1
            if closing == ":":
                second = self.prompt(end + 1, depth)
                if second is not None and second[1] < len(text) and text[second[1]] == ")":
                    return ["(", *inner, ":", *second[0], ")"], second[1] + 1
            return None
        if closing == "]":
            return ["[", *inner, "]"], end + 1
        if closing == "|":
            options = [inner]
            while end < len(text) and text[end] == "|":
                found = self.prompt(end + 1, depth)
                if found is None:
                    return None
                options.append(found[0])
                end = found[1]
            if end < len(text) and text[end] == "]":
                return [Alternation(options)], end + 1
            return None
        if closing == ":":
            number = _number.match(text, end + 1)
            if number:  # [after:when]
                return [Edit(None, inner, number.group(1))], number.end()
            second = self.prompt(end + 1, depth)
            if second is not None and second[1] < len(text) and text[second[1]] == ":":
                number = _number.match(text, second[1] + 1)
                if number:  # [before:after:when]
                    return [Edit(inner, second[0], number.group(1))], number.end()
        return None


def parse_prompt_edits(text: str) -> list[Node]:
    """The prompt as text pieces, `Edit`s and `Alternation`s. Raises PromptSyntaxError."""
    try:
        return _Parser(text).top()
    except RecursionError:
        raise PromptSyntaxError("brackets nest too deeply to read") from None


def _edit_step(edit: Edit, steps: int, base_steps: Optional[int]) -> int:
    """The last step (A1111 counts from 1) that shows `before`. Fractions have a decimal point."""
    value = float(edit.when)
    fraction_offset, step_offset = (0.0, 0) if base_steps is None else (1.0, base_steps)
    value = (value - fraction_offset) * steps if "." in edit.when else value - step_offset
    return int(max(-1.0, min(float(steps), value)))


def _walk(nodes: list[Node]):
    for node in nodes:
        yield node
        if isinstance(node, Edit):
            yield from _walk((node.before or []) + node.after)
        elif isinstance(node, Alternation):
            for option in node.options:
                yield from _walk(option)


def _render(nodes: list[Node], step: int, steps: int, base_steps: Optional[int]) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, Edit):
            shown = (node.before or []) if step <= _edit_step(node, steps, base_steps) else node.after
            out.append(_render(shown, step, steps, base_steps))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps, base_steps))
    return "".join(out)


def parse_prompt_schedule(prompt: str, steps: int, hires_steps: Optional[int] = None) -> list[tuple[int, str]]:
    """[(last step, text), ...]: which text is in force up to which step, as A1111 lists it.

    `steps` is the pass's length in sampler steps. For the hires pass give the first pass's length as
    `steps` and the hires pass's as `hires_steps`. Raises PromptSyntaxError.

    >>> parse_prompt_schedule("a [b:c:2] d", 10)
    [(2, 'a b d'), (10, 'a c d')]
    """
    nodes = parse_prompt_edits(prompt)
    base_steps, steps = (None, steps) if hires_steps is None else (steps, hires_steps)
    boundaries = {steps}
    for node in _walk(nodes):
        if isinstance(node, Edit):
            when = _edit_step(node, steps, base_steps)
            if when >= 1:
                boundaries.add(when)
        elif isinstance(node, Alternation):
            boundaries.update(range(1, steps + 1))
    return [(step, _render(nodes, step, steps, base_steps)) for step in sorted(boundaries)]


def prompt_schedules(prompts: list[str], steps: int, hires_steps: Optional[int] = None,
                     warnings: Optional[list[str]] = None) -> list[list[tuple[int, str]]]:
    """`parse_prompt_schedule` for each prompt; a prompt that can't be read is used as it stands, with a warning."""
    found: dict[str, list[tuple[int, str]]] = {}
    for prompt in prompts:
        if prompt in found:
            continue
        try:
            found[prompt] = parse_prompt_schedule(prompt, steps, hires_steps)
        except PromptSyntaxError as e:
            if warnings is not None:
                warnings.append(f"prompt editing syntax ignored, the prompt is read literally: {e}")
            found[prompt] = [(hires_steps or steps, prompt)]
    return [found[prompt] for prompt in prompts]
