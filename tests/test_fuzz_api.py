"""A schemathesis fuzz run over the real app's OpenAPI schema (tiny model loaded, built-in extensions on): for
every operation, inputs that fit the schema and inputs that don't. No input may get a 5xx or stop the server.

Bounded to run in about a minute on two CPU cores: a few examples per operation and mode, derandomized so a
failure repeats. Generation routes are fuzzed with every field, but values that would be valid *and* costly
(size, steps, batch counts) are pinned to tiny ones, so each image costs milliseconds; invalid values stay as
generated, which is what exercises the validation.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from modules import cmd_args
from modules.extensions import load_extensions, unload_extensions
from modules.jobs import JobState
from tests.test_api_helpers import make_engine, running_server

# A longer run: ATELIER_FUZZ_SCALE=20 pytest tests/test_fuzz_api.py (20x the examples per operation).
SCALE = int(os.environ.get("ATELIER_FUZZ_SCALE", "1"))
EXAMPLES = {GenerationMode.POSITIVE: 8 * SCALE, GenerationMode.NEGATIVE: 6 * SCALE}
DEEPER = 2  # times as many for the routes that turn a body into a job
# Answers that are 5xx by design, not failures: A1111's interrogate route, for which Atelier has no model.
DELIBERATE = {("POST", "/sdapi/v1/interrogate"): 501}
GENERATION = {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/atelier/v1/txt2img", "/atelier/v1/img2img",
              "/atelier/v1/batch"}
# Valid values of these fields are replaced by cheap ones; invalid ones are kept.
CHEAP = {"width": 64, "height": 64, "steps": 1, "batch_size": 1, "n_iter": 1, "hr_scale": 1.0,
         "hr_second_pass_steps": 1, "hr_resize_x": 0, "hr_resize_y": 0, "seed_resize_from_w": 0,
         "seed_resize_from_h": 0}


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory):
    eng = make_engine(tiny_dir, policy, tmp_path_factory.mktemp("fuzz"))
    # The extension manager is told the server listens on the network, so install/update/uninstall answer 403
    # whatever the fuzzer sends: a generated `source` such as "." must never clone or copy anything for real.
    eng.extensions = load_extensions(eng, cmd_args.parse(["--nowebui", "--listen"]))
    yield eng
    unload_extensions(eng)
    eng.shutdown()


@pytest.fixture(scope="module")
def server(engine):
    with running_server(engine, ["--nowebui"]) as (url, app):
        yield url, app


def is_valid_cheap(name: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if name in ("width", "height"):
        return 64 <= value <= 8192 and value % 8 == 0
    return 0 <= value <= 1000


def tame(body: Any) -> Any:
    """A generation body with costly valid values made cheap, and the A1111 defaults (512x512, 50 steps) that a
    missing field would bring replaced by tiny ones."""
    if not isinstance(body, dict):
        return body
    if "expand" in body or "base" in body:  # /atelier/v1/batch: its `base` is the generation body
        body["base"] = tame(body["base"] if isinstance(body.get("base"), dict) else {})
        if isinstance(body.get("expand"), dict):
            body["expand"] = {k: [CHEAP.get(k, v) if is_valid_cheap(k, v) else v for v in values[:2]]
                              if isinstance(values, list) else values
                              for k, values in list(body["expand"].items())[:2]}
        return body
    for name, cheap in CHEAP.items():
        if name not in body or body[name] is None or is_valid_cheap(name, body[name]):
            body[name] = cheap
    return body


def drop_queued(engine) -> None:
    """The /atelier routes queue and answer at once: cancel what they queued so the queue never backs up."""
    for job in engine.queue.list():
        if job.state is JobState.queued:
            engine.queue.cancel(job.id)


def settle(engine, timeout: float = 60.0) -> None:
    """Nothing queued or running: a job still inside torch when the process exits aborts it."""
    deadline = time.monotonic() + timeout
    while engine.queue.current() is not None or any(j.state is JobState.queued for j in engine.queue.list()):
        assert time.monotonic() < deadline, "the queue did not drain"
        drop_queued(engine)
        engine.queue.interrupt()
        time.sleep(0.05)


def fuzz_operation(operation, url: str, engine, mode: GenerationMode, session: requests.Session) -> list[str]:
    """Up to EXAMPLES[mode] cases for one operation; returns a description of each 5xx (the run goes on)."""
    failures: list[str] = []
    key = (operation.method.upper(), operation.path)
    examples = EXAMPLES[mode] * (DEEPER if operation.path in GENERATION else 1)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        if operation.path in GENERATION:
            case.body = tame(case.body)
        try:  # streamed: the event routes never end, so their body is not read
            with session.request(**case.as_transport_kwargs(base_url=url), timeout=60, stream=True) as response:
                status = response.status_code
                text = "" if "event-stream" in response.headers.get("content-type", "") else response.text[:300]
        except requests.RequestException as e:  # the server dropped the connection: as bad as a 500
            failures.append(f"{key} {mode.value}: no answer ({type(e).__name__}: {e}) to {case.body!r:.300}")
            return
        if status >= 500 and DELIBERATE.get(key) != status:
            failures.append(f"{key} {mode.value}: {status} {text} for path={case.path_parameters!r} "
                            f"query={case.query!r} body={case.body!r:.300}")
        if operation.path.startswith("/atelier/v1/") and status == 202:
            drop_queued(engine)

    try:
        check()
    except Unsatisfiable:  # no parameters or body: nothing can be made invalid
        assert mode is GenerationMode.NEGATIVE, key
    return failures[:3]


def test_every_operation_in_the_schema_is_fuzzed(server):
    url, app = server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    fuzzed = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())}
    routes = {(method, route.path.replace(":path}", "}")) for route in app.routes
              if route.path.startswith(("/sdapi/", "/atelier/"))
              for method in (getattr(route, "methods", None) or ()) if method != "HEAD"}
    assert routes and routes <= fuzzed, routes - fuzzed


def test_no_generated_input_gets_a_server_error(server, engine):
    url, _ = server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 50
    failures: list[str] = []
    started = time.monotonic()
    with requests.Session() as session:
        for operation in operations:
            # A path-only operation has no invalid form beyond what positive strings cover (and hypothesis is slow
            # to invent one): the negative mode is for bodies and queries.
            has_input = bool(len(operation.body) or len(operation.query))
            for mode in EXAMPLES if has_input else [GenerationMode.POSITIVE]:
                failures += fuzz_operation(operation, url, engine, mode, session)
            alive = httpx.get(f"{url}/sdapi/v1/progress", timeout=30)  # no crash: the server still answers
            assert alive.status_code == 200, (operation.path, alive.text)
    settle(engine)
    print(f"fuzzed {len(operations)} operations in {time.monotonic() - started:.1f}s")
    assert not failures, "\n".join(failures)


# Hypothesis' text strategies (and so schemathesis') leave out surrogates; JSON can still spell them.
ANY_TEXT = st.text(st.characters(categories=["Cs", "Cc", "L", "N", "P", "S", "Zs"]), max_size=12)


@settings(max_examples=25, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["prompt", "negative_prompt", "styles", "override_settings", "infotext"]), text=ANY_TEXT)
def test_any_json_text_gets_an_answer_not_a_server_error(server, field, text):
    url, _ = server
    value = {"styles": [text], "override_settings": {text: text}}.get(field, text)
    raw = json.dumps({field: value, "width": 64, "height": 64, "steps": 1})  # ensure_ascii: surrogates as \udxxx
    response = httpx.post(f"{url}/sdapi/v1/txt2img", content=raw, headers={"Content-Type": "application/json"},
                          timeout=60)
    assert response.status_code in (200, 422), (field, text, response.text[:300])
