"""The two-way line between a running generation and whoever owns it (a job, a test, a script).

The generation reports steps through `report_step`, and checks `interrupted` / `skipped`
once per step. Owners call `interrupt()` or `skip()` from any thread.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


class Interrupted(Exception):
    """Raised inside the loop when the owner interrupted; processing keeps what finished."""


class Skipped(Exception):
    """Raised inside the loop when the owner skipped the current image batch."""


@dataclass
class StepReport:
    step: int  # steps done in this job so far
    total: int  # steps the whole job will take
    started_at: float
    preview: Optional[Callable[[], object]] = None  # lazily builds a PIL preview of the current latents

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def eta_seconds(self) -> Optional[float]:
        if self.step <= 0:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed / self.step * (self.total - self.step)


@dataclass
class GenerationControl:
    on_step: Optional[Callable[[StepReport], None]] = None
    _interrupt: threading.Event = field(default_factory=threading.Event)
    _skip: threading.Event = field(default_factory=threading.Event)
    started_at: float = field(default_factory=time.monotonic)
    step: int = 0
    total: int = 0

    def interrupt(self) -> None:
        self._interrupt.set()

    def skip(self) -> None:
        self._skip.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def check(self) -> None:
        """Called by the loop before each step."""
        if self._interrupt.is_set():
            raise Interrupted()
        if self._skip.is_set():
            self._skip.clear()
            raise Skipped()

    def report_step(self, preview: Optional[Callable[[], object]] = None) -> None:
        self.step += 1
        if self.on_step is not None:
            self.on_step(StepReport(self.step, self.total, self.started_at, preview))
