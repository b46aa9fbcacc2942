"""Prompt emphasis syntax, as A1111 reads it: (a) ×1.1, [a] ÷1.1, (a:1.3), \\( escapes, BREAK.

Unclosed brackets apply to the rest of the prompt, as in A1111. Scheduling, alternation and AND
are the prompt-language issue's; this module turns one prompt into (text, weight) pieces.
"""
from __future__ import annotations

import re

ROUND, SQUARE = 1.1, 1 / 1.1

_attention = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:
""", re.X)
_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] with equal neighbours merged; BREAK comes out as ("BREAK", -1)."""
    result: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for item in result[start:]:
            item[1] *= factor

    for match in _attention.finditer(text):
        token, weight = match.group(0), match.group(1)
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
            parts = _break.split(token)
            for i, part in enumerate(parts):
                if i > 0:
                    result.append(["BREAK", -1.0])
                result.append([part, 1.0])
    for start in round_open:
        scale_from(start, ROUND)
    for start in square_open:
        scale_from(start, SQUARE)

    if not result:
        return [("", 1.0)]
    merged: list[list] = []
    for piece in result:
        if merged and piece[1] == merged[-1][1] and piece[1] != -1:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, w) for t, w in merged if t or w == -1] or [("", 1.0)]
