"""Extra-network tags in prompts, `<kind:arg1:arg2:name=value>`, as A1111 reads them.

Tags are cut out of the text the model sees (the infotext keeps them) and handed to whichever handler
registered that kind (LoRA, hypernetworks, ... come from extensions). As in A1111, a batch uses the tags of
its first prompt, a handler is activated before the prompts are encoded (it may change the text encoder),
every registered handler not mentioned is activated with no arguments (so it can turn itself off), and all
are deactivated when the job ends. An unknown kind, or a name a handler doesn't know, is a warning on the
job, never an error.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

log = logging.getLogger(__name__)

_tag = re.compile(r"<(\w+):([^>]+)>")


@dataclass
class ExtraNetworkParams:
    """One tag's arguments: `<lora:film:0.8:te=0.5>` → items ["film", "0.8", "te=0.5"],
    positional ["film", "0.8"], named {"te": "0.5"}."""

    items: list[str] = field(default_factory=list)
    positional: list[str] = field(default_factory=list)
    named: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_items(cls, items: list[str]) -> "ExtraNetworkParams":
        params = cls(items=list(items))
        for item in items:
            parts = item.split("=", 2)
            if len(parts) == 2:
                params.named[parts[0]] = parts[1]
            else:
                params.positional.append(item)
        return params


@dataclass
class ExtraNetworkContext:
    """What a handler gets: the model to change, the request, and where to leave messages."""

    model: Any  # LoadedModel
    request: Any  # GenerationRequest
    notes: list[str] = field(default_factory=list)  # warnings shown on the job
    extra_params: dict[str, object] = field(default_factory=dict)  # added to the infotext ("Lora hashes", ...)

    def warn(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)


class ExtraNetworkHandler(Protocol):
    def activate(self, context: ExtraNetworkContext, params: list[ExtraNetworkParams]) -> None:
        """Apply this kind's tags; an empty list means "none in this prompt": undo any earlier effect.
        Called again for each batch; each call replaces the previous one. Warn about unknown names."""

    def deactivate(self, context: ExtraNetworkContext) -> None:
        """The job is over."""


def parse_extra_networks(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    """(prompt without tags, {kind: [params per tag, in order]})."""
    found: dict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def take(match: re.Match) -> str:
        found[match.group(1)].append(ExtraNetworkParams.from_items(match.group(2).split(":")))
        return ""

    return _tag.sub(take, prompt), dict(found)


def network_key(data: dict[str, list[ExtraNetworkParams]]) -> tuple:
    """A hashable summary of a batch's tags, for caching conditioning encoded under them."""
    return tuple(sorted((kind, tuple(tuple(p.items) for p in params)) for kind, params in data.items()))


class ExtraNetworkRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, ExtraNetworkHandler] = {}
        self._lock = threading.Lock()

    def register(self, kind: str, handler: ExtraNetworkHandler) -> None:
        with self._lock:
            self._handlers[kind] = handler

    def unregister(self, kind: str) -> None:
        with self._lock:
            self._handlers.pop(kind, None)

    def get(self, kind: str) -> Optional[ExtraNetworkHandler]:
        return self._handlers.get(kind)

    def kinds(self) -> list[str]:
        return list(self._handlers)

    def activate(self, context: ExtraNetworkContext, data: dict[str, list[ExtraNetworkParams]]) -> None:
        with self._lock:
            handlers = dict(self._handlers)
        for kind, params in data.items():
            if kind not in handlers:
                context.warn(f"unknown extra network <{kind}:...>: no handler for '{kind}' is installed; "
                             "the tag was ignored")
        for kind, handler in handlers.items():
            try:
                handler.activate(context, data.get(kind, []))
            except Exception as e:  # a broken extension must not fail the job (A1111 reports and goes on)
                log.exception("extra network '%s' failed to activate", kind)
                context.warn(f"extra network '{kind}' failed: {e}")

    def deactivate(self, context: ExtraNetworkContext) -> None:
        with self._lock:
            handlers = dict(self._handlers)
        for kind, handler in handlers.items():
            try:
                handler.deactivate(context)
            except Exception as e:
                log.exception("extra network '%s' failed to deactivate", kind)
                context.warn(f"extra network '{kind}' failed to deactivate: {e}")


default_registry = ExtraNetworkRegistry()


def register_extra_network(kind: str, handler: ExtraNetworkHandler) -> None:
    """Make `<kind:...>` tags reach `handler` (in every job that uses the default registry)."""
    default_registry.register(kind, handler)
