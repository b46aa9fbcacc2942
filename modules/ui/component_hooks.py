"""A1111's before_component / after_component, called for every Gradio component built while the UI is built.

A1111 patches the component base class's `__init__` so that extensions can find a component by the keyword
arguments it is built with (`kwargs.get("elem_id") == "txt2img_prompt"`) and wire events to it, or add their own
components next to it. Around each component, in A1111's order:

    the current tab's scripts' before_component(component, **kwargs)
    the on_before_component callbacks
    (the component is built)
    the on_after_component callbacks
    the current tab's scripts' after_component(component, **kwargs)

The txt2img tab's components go to the txt2img runner's scripts, the img2img and inpaint tabs' to the img2img
runner's (A1111's inpaint is part of img2img); other components (quicksettings, extension tabs, settings) reach
only the callbacks. Layouts (Row, Column, Tab, Accordion) are not components in Gradio and call no hook, as in
A1111. The patch lives only inside `installed()`, and only the thread that entered it calls hooks.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
from typing import Any, Callable, Iterator, Optional

from gradio.components.base import Component

from modules.extension_callbacks import callbacks, loading, record_failure

log = logging.getLogger(__name__)


class ComponentHooks:
    """One UI build's hooks: the runner of the tab being built (see `scripts`) and which hooks have failed."""

    def __init__(self) -> None:
        self.runner: Any = None  # a modules.scripting.ScriptRunner, or None outside the generation tabs
        self._failed: set[tuple[int, str]] = set()

    @contextlib.contextmanager
    def scripts(self, runner: Any) -> Iterator[None]:
        """Components built inside also go to `runner`'s scripts (A1111's `scripts.scripts_current`)."""
        previous, self.runner = self.runner, runner
        try:
            yield
        finally:
            self.runner = previous

    def before(self, component: Any, kwargs: dict[str, Any]) -> None:
        for script in self._scripts():
            self._call((id(script), "before"), script.before_component, script.extension,
                       lambda s=script: f"before_component() of script '{s.title()}'", component, kwargs)
        for cb in callbacks("before_component"):
            with loading(cb.owner):  # what it registers is its extension's
                self._call((id(cb), "before"), cb.fn, cb.owner.extension,
                           lambda cb=cb: f"on_before_component callback {cb.name}", component, kwargs)

    def after(self, component: Any, kwargs: dict[str, Any]) -> None:
        for cb in callbacks("after_component"):
            with loading(cb.owner):
                self._call((id(cb), "after"), cb.fn, cb.owner.extension,
                           lambda cb=cb: f"on_after_component callback {cb.name}", component, kwargs)
        for script in self._scripts():
            self._call((id(script), "after"), script.after_component, script.extension,
                       lambda s=script: f"after_component() of script '{s.title()}'", component, kwargs)

    def _scripts(self) -> list[Any]:
        return list(self.runner.scripts) if self.runner is not None else []

    def _call(self, key: tuple[int, str], fn: Callable[..., Any], extension: str, where: Callable[[], str],
              component: Any, kwargs: dict[str, Any]) -> None:
        """A failure never stops the build and is recorded once per hook; the hook is still called for later
        components, as in A1111, since the one it waits for may come later."""
        try:
            fn(component, **kwargs)
        except Exception as e:
            if key in self._failed:
                log.debug("%s failed again (elem_id=%r): %s", where(), kwargs.get("elem_id"), e)
                return
            self._failed.add(key)
            record_failure(extension, f"{where()} (component elem_id={kwargs.get('elem_id')!r}; later failures "
                                      "of this hook are not reported)", e)


_active: Optional[ComponentHooks] = None


@contextlib.contextmanager
def installed() -> Iterator[ComponentHooks]:
    """While inside, every component built on this thread calls the hooks; Gradio's own constructor is put back
    on the way out, whatever happens."""
    global _active
    if _active is not None:
        raise RuntimeError("component hooks are already installed: one UI build at a time")
    hooks, thread = ComponentHooks(), threading.get_ident()
    original = Component.__dict__["__init__"]

    @functools.wraps(original)  # Gradio reads constructor signatures; keep the original's
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        if threading.get_ident() != thread:  # a request served meanwhile builds nothing for the hooks
            original(self, *args, **kwargs)
            return
        hooks.before(self, kwargs)
        original(self, *args, **kwargs)
        hooks.after(self, kwargs)

    Component.__init__ = init
    _active = hooks
    try:
        yield hooks
    finally:
        Component.__init__ = original
        _active = None
