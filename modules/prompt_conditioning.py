"""A batch's prompts → the cond and uncond the denoise loop uses at each step.

For each prompt (each AND part of it, for the positive prompt) the schedule lists the texts in force up to
which step; those texts are encoded together and cached per model. At every step, the `conditioning` hook
picks each prompt's entry for that step (the first whose last step is ≥ the step counter, which counts
sampler calls from 0, as A1111's does) and stacks the batch. AND parts become several rows per image with
weights; `sampling` sums their guidance.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional

from modules.prompt_parser import prompt_schedules, split_and
from modules.sampling import HOOK_POINTS, DenoiseState, Hooks
from modules.text_encoding import Conditioning, EncodeSettings, PromptEncoder, stack

SCHEDULE_KEY = "prompt_schedule"  # DenoiseState.extra key of a pass's StepConditioning
CACHE_SIZE = 16  # entries per model; each holds one prompt's texts (a few MB at most on SDXL)


# ---------------------------------------------------------------------------------------------- cache

class ConditioningCache:
    """Encoded texts of one model, least recently used dropped first. Keys carry the texts, the encode
    settings (clip skip, emphasis, ...), the extra networks active and the embeddings' version, so a change
    in any of them re-encodes."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self._items: "OrderedDict[tuple, list[Conditioning]]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, compute: Callable[[], list[Conditioning]]) -> list[Conditioning]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_caches: dict[int, ConditioningCache] = {}
_caches_lock = threading.Lock()


def conditioning_cache(model: Any) -> ConditioningCache:
    """The cache that belongs to this loaded model; it goes when the model does."""
    key = id(model)
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = ConditioningCache()
            weakref.finalize(model, _caches.pop, key, None)
        return cache


def invalidate_conditioning_cache(model: Any) -> None:
    """For code that changes a text encoder's weights in place outside extra-network tags."""
    with _caches_lock:
        cache = _caches.get(id(model))
    if cache is not None:
        cache.clear()


# ---------------------------------------------------------------------------------------------- schedules

@dataclass
class ScheduledConditioning:
    """One prompt over one pass: [(last step, conditioning)], A1111's ScheduledPromptConditioning list."""

    entries: list[tuple[int, Conditioning]]

    def index_at(self, step: int) -> int:
        for i, (last_step, _) in enumerate(self.entries):
            if step <= last_step:
                return i
        return len(self.entries) - 1


ImageParts = list[tuple[ScheduledConditioning, float]]  # one image's prompt parts and their weights


class PromptEncoding:
    """Encodes a batch's texts for one model, settings and set of extra networks, through the cache."""

    def __init__(self, encoder: PromptEncoder, settings: EncodeSettings, cache: ConditioningCache,
                 network_key: tuple = (), notes: Optional[list[str]] = None,
                 extra_params: Optional[dict[str, object]] = None):
        self.encoder, self.settings, self.cache, self.network_key = encoder, settings, cache, network_key
        self.notes = notes if notes is not None else []
        self.extra_params = extra_params if extra_params is not None else {}

    def schedule(self, prompt: str, steps: int, hires_steps: Optional[int], negative: bool) -> ScheduledConditioning:
        warnings: list[str] = []
        schedule = prompt_schedules([prompt], steps, hires_steps, warnings)[0]
        for warning in warnings:
            if warning not in self.notes:
                self.notes.append(warning)
        texts = tuple(text for _, text in schedule)
        if self.settings.emphasis != "Original" and any("(" in t or "[" in t for t in texts):
            self.extra_params["Emphasis"] = self.settings.emphasis  # A1111 notes it only when it mattered
        embeddings = self.encoder.embeddings
        key = (texts, negative, self.settings, self.network_key, None if embeddings is None else embeddings.version)
        conds = self.cache.get(key, lambda: self.encoder.encode_batch(texts, self.settings, negative))
        return ScheduledConditioning([(last, cond) for (last, _), cond in zip(schedule, conds)])


class BatchPrompts:
    """The prompts of one batch, cond (split at AND, with weights) or uncond, ready for any pass."""

    def __init__(self, encoding: PromptEncoding, prompts: list[str], negative: bool = False):
        self.encoding, self.prompts, self.negative = encoding, prompts, negative
        self.parts = [[(p, 1.0)] if negative else split_and(p) for p in prompts]

    def for_pass(self, steps: int, hires_steps: Optional[int] = None) -> list[ImageParts]:
        """Per image, its parts' schedules and weights. `steps`/`hires_steps` as in parse_prompt_schedule."""
        found: dict[str, ScheduledConditioning] = {}

        def scheduled(text: str) -> ScheduledConditioning:
            if text not in found:
                found[text] = self.encoding.schedule(text, steps, hires_steps, self.negative)
            return found[text]

        return [[(scheduled(text), weight) for text, weight in _guided_parts(parts)] for parts in self.parts]


def _guided_parts(parts: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Parts that change the result: weight 0 adds nothing to guidance, so it isn't computed."""
    kept = [(text, weight) for text, weight in parts if weight != 0]
    return kept or parts[:1]


class StepConditioning:
    """Cond and uncond of one pass, step by step; stacks a batch once per change of text."""

    def __init__(self, cond: list[ImageParts], uncond: list[ImageParts]):
        self.cond, self.uncond = cond, uncond
        self._last: Optional[tuple[tuple, tuple[Conditioning, Conditioning]]] = None

    def at(self, step: int) -> tuple[Conditioning, Conditioning]:
        key = tuple(s.index_at(step) for image in self.cond + self.uncond for s, _ in image)
        if self._last is None or self._last[0] != key:
            self._last = key, (_stack(self.cond, step), _stack(self.uncond, step))
        return self._last[1]


def _stack(images: list[ImageParts], step: int) -> Conditioning:
    rows, parts = [], []
    for image in images:
        image_parts = []
        for schedule, weight in image:
            image_parts.append((len(rows), weight))
            rows.append(schedule.entries[schedule.index_at(step)][1])
        parts.append(image_parts)
    simple = all(len(p) == 1 and p[0][1] == 1.0 for p in parts)
    return stack(rows, None if simple else parts)


# ---------------------------------------------------------------------------------------------- the hook

def apply_prompt_schedule(state: DenoiseState) -> None:
    schedule = state.extra.get(SCHEDULE_KEY)
    if schedule is not None:
        state.cond, state.uncond = schedule.at(state.step)


def with_prompt_schedule(hooks: Hooks) -> Hooks:
    """Hooks that set each step's cond/uncond first, then run `hooks` (which see, and may replace, them)."""
    combined = Hooks()
    combined.add("conditioning", apply_prompt_schedule)
    for point in HOOK_POINTS:
        combined.add(point, partial(hooks.run, point))
    return combined
