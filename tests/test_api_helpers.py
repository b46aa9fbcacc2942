"""Shared by the API tests: an engine on the tiny checkpoints and the real server on a loopback port.

(No tests here; the name keeps it with the API tests it serves.)
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import uvicorn
from PIL import Image

from modules import cmd_args
from modules.engine import Engine
from modules.paths import Paths
from modules.api.server import create_app
from modules.settings import Settings

TINY = dict(width=64, height=64, steps=1)


def make_engine(tiny_dir: Path, policy, work: Path) -> Engine:
    """An engine whose data dir (config, caches, styles.csv, outputs) is `work`, on the shared tiny checkpoints."""
    paths = Paths.from_flags(data_dir=str(work), ckpt_dir=str(tiny_dir / "models" / "Stable-diffusion"),
                             outputs_dir=str(work / "outputs"))
    settings = Settings(file=work / "config.json")
    settings.set("sd_model_checkpoint", "tiny-sd1.safetensors")
    settings.set("show_progress_every_n_steps", 1)
    engine = Engine(paths, policy, settings)
    engine.queue.preview_every = 1
    return engine


@contextlib.contextmanager
def running_server(engine: Engine, argv: list[str], app=None) -> Iterator[tuple[str, object]]:
    """(base_url, app) of the real app under uvicorn on 127.0.0.1:<free port>, stopped afterwards."""
    app = app or create_app(engine, cmd_args.parse(argv))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "server did not stop"


def b64_png(image: Image.Image, prefix: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/png;base64,{data}" if prefix else data


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def gradient(w: int = 64, h: int = 64) -> Image.Image:
    return Image.linear_gradient("L").resize((w, h)).convert("RGB")


def half_mask(w: int = 64, h: int = 64) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, (0, 0, w // 2, h))
    return mask


def wait_until(condition, timeout: float = 60.0, message: Optional[str] = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message or "condition not met in time"
        time.sleep(0.02)


def events_of_one_job(stream, start_job) -> tuple[str, list[dict]]:
    """Read an open /atelier/v1/events stream: after ": connected", call start_job() -> job id, then collect
    that job's events up to its "done"."""
    lines = stream.iter_lines()
    assert next(lines) == ": connected"  # subscribed: nothing from here on is missed
    job_id, events = start_job(), []
    for line in lines:
        if line.startswith("data: "):
            event = json.loads(line[6:])
            if event["job_id"] == job_id:
                events.append(event)
                if event["type"] == "done":
                    break
    return job_id, events


class Gate:
    """Holds the running job before its second step while armed, so tests can see it run and others queue."""

    def __init__(self):
        self.armed, self.entered, self.release = False, threading.Event(), threading.Event()

    def hook(self, state) -> None:
        if self.armed and state.step >= 1:
            self.entered.set()
            assert self.release.wait(60)

    def arm(self) -> None:
        self.armed = True
        self.entered.clear()
        self.release.clear()

    def open(self) -> None:
        self.armed = False
        self.release.set()


@contextlib.contextmanager
def gated_engine(tiny_dir: Path, policy, folder: Path, gate: Gate) -> Iterator[Engine]:
    """An engine whose jobs `gate` can hold; the gate is opened before it shuts down."""
    engine = make_engine(tiny_dir, policy, folder)
    engine.hooks.add("before_step", gate.hook)
    try:
        yield engine
    finally:
        gate.open()
        engine.shutdown()
