"""Per-client limits on generation work: --max-queued-per-client and --api-rate-limit.

A client is the signed-in user when the API has a password (the name the auth middleware verified), else the
client's IP address. Every API route that submits generation work takes `client` from `submission`, the one
FastAPI dependency, which counts the submission against the rate limit; the jobs it queues are counted while
they wait or run (`reserve` at submit, `release` when each ends). The web UI's own submissions are the local
artist's and are not limited.
"""
from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from typing import Callable, Deque, Iterator

from fastapi import Request

from .errors import ApiError

WINDOW_SECONDS = 60.0
QUEUE_RETRY_AFTER = 5  # seconds: a generation usually ends (and frees a slot) well within a few of these


class TooManyRequests(ApiError):
    def __init__(self, detail: str, limit: str, value: int, retry_after: int):
        super().__init__(429, detail, error="TooManyRequests", limit=limit, max=value, retry_after=retry_after,
                         headers={"Retry-After": str(retry_after)})


def client_of(request: Request) -> str:
    """`user:<name>` when the auth middleware verified a password, else `ip:<address>`."""
    user = request.scope.get("state", {}).get("auth_user")
    if user:
        return f"user:{user}"
    return f"ip:{request.client.host if request.client else '-'}"


class ClientLimits:
    def __init__(self, max_queued: int = 0, per_minute: int = 0, clock: Callable[[], float] = time.monotonic):
        self.max_queued, self.per_minute, self.clock = max(0, max_queued), max(0, per_minute), clock
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}  # client -> jobs waiting or running
        self._recent: dict[str, Deque[float]] = {}  # client -> submission times within the window

    @classmethod
    def from_args(cls, args) -> "ClientLimits":
        return cls(int(getattr(args, "max_queued_per_client", 0) or 0), int(getattr(args, "api_rate_limit", 0) or 0))

    def submission(self, request: Request) -> str:
        """The FastAPI dependency of every submitting route: the client's name, after counting this submission
        against --api-rate-limit (429 with Retry-After when over)."""
        client = client_of(request)
        if not self.per_minute:
            return client
        now = self.clock()
        with self._lock:
            recent = self._recent.setdefault(client, collections.deque())
            while recent and now - recent[0] >= WINDOW_SECONDS:
                recent.popleft()
            if len(recent) >= self.per_minute:
                wait = max(1, math.ceil(WINDOW_SECONDS - (now - recent[0])))
                raise TooManyRequests(f"more than {self.per_minute} generation requests a minute from this client; "
                                      f"try again in {wait} s", "--api-rate-limit", self.per_minute, wait)
            recent.append(now)
            for name in [name for name, times in self._recent.items() if not times]:
                del self._recent[name]  # forget idle clients
        return client

    def reserve(self, client: str, jobs: int = 1) -> None:
        """Count `jobs` more for the client, or raise 429 if that would pass --max-queued-per-client."""
        with self._lock:
            active = self._active.get(client, 0)
            if self.max_queued and active + jobs > self.max_queued:
                raise TooManyRequests(f"this client has {active} job(s) waiting or running and may have at most "
                                      f"{self.max_queued}; this request adds {jobs}", "--max-queued-per-client",
                                      self.max_queued, QUEUE_RETRY_AFTER)
            self._active[client] = active + jobs

    def release(self, client: str, jobs: int = 1) -> None:
        with self._lock:
            left = self._active.get(client, 0) - jobs
            if left > 0:
                self._active[client] = left
            else:
                self._active.pop(client, None)

    def active(self, client: str) -> int:
        with self._lock:
            return self._active.get(client, 0)

    @contextlib.contextmanager
    def running(self, client: str) -> Iterator[None]:
        """Work done in the request itself (extras, built-in scripts) counts as one job while it runs."""
        self.reserve(client)
        try:
            yield
        finally:
            self.release(client)
