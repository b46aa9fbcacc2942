"""Exit while a job is inside torch: the process ends cleanly (no "terminate called" abort), the job is
interrupted at a step boundary first, and nothing half-written is left in the outputs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A long job on the tiny model; once it is a few steps in, the main thread leaves without shutting anything down,
# as a script that forgets to, or an uncaught exception, would.
EXITER = """
import os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, {root!r})
import logging, torch
logging.basicConfig(level=logging.INFO)
from pathlib import Path
from modules.devices import DevicePolicy
from modules.request import GenerationRequest
from tests.test_api_helpers import make_engine
policy = DevicePolicy(torch.device("cpu"), torch.float32, torch.float32, False)
engine = make_engine(Path({ckpts!r}), policy, Path({work!r}))
job = engine.queue.submit(GenerationRequest(prompt="a", width={size}, height={size}, steps=1000),
                          on_finished=lambda job: print("job ended", job.state.value, flush=True))
while job.step < 2:
    time.sleep(0.01)
print("exiting mid-job", flush=True)
sys.exit(0)
"""


def test_exit_mid_job_waits_for_the_step_and_never_aborts(tiny_dir, tmp_path):
    work = tmp_path / "work"
    # 256 px: each step is long enough (a second or more) that exit lands inside torch, the case that aborted.
    script = EXITER.format(root=str(ROOT), ckpts=str(tiny_dir), work=str(work), size=256)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "exiting mid-job" in proc.stdout, proc.stderr
    assert "terminate called" not in proc.stderr and "Aborted" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "job ended interrupted" in proc.stdout  # it stopped at a step, before the interpreter went down
    assert "to stop at its next step" in proc.stderr  # the log line saying why exit waits
    outputs = work / "outputs"
    leftovers = [p for p in outputs.rglob("*") if p.is_file()] if outputs.exists() else []
    assert leftovers == [], leftovers  # no temp files and no half images


def test_sigterm_to_the_server_mid_job_exits_0_after_the_step(tiny_dir, tmp_path):
    import os
    import signal
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    work = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "webui.py", "--nowebui", "--data-dir", str(work), "--ckpt-dir",
                             str(tiny_dir / "models" / "Stable-diffusion"), "--port", str(port),
                             "--no-download-prompt", "--disable-all-extensions"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                httpx.get(f"{url}/sdapi/v1/samplers", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        job = httpx.post(f"{url}/atelier/v1/txt2img", json={"prompt": "a", "width": 256, "height": 256,
                                                            "steps": 1000}, timeout=60).json()["id"]
        while httpx.get(f"{url}/atelier/v1/jobs/{job}", timeout=60).json()["step"] < 2:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # uvicorn stops serving, then raises it again for webui's handler
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "terminate called" not in stderr, stderr
    assert "to stop at its next step" in stderr, stderr
    assert proc.returncode == 0, stderr  # before: killed by SIGTERM (-15) mid-job
    leftovers = [p for p in (work / "outputs").rglob("*") if p.is_file()] if (work / "outputs").exists() else []
    assert leftovers == [], leftovers
