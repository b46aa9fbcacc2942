"""Run a file of generation requests through a running Atelier's job API and collect the images in a folder.

    python tools/batch.py requests.json --out batch-out [--server http://127.0.0.1:7861] [--user name:password]

REQUESTS is JSON (a list of request bodies, `{"requests": [...]}`, or `{"base": {...}, "expand": {...}}` as
/atelier/v1/batch takes it) or CSV (a header of field names, one request a row; cells that read as JSON, such as
numbers, become those values; empty cells are left out). A request's `type` is txt2img or img2img (img2img when
it has `init_images`). Fields are /atelier/v1's, the same as /sdapi/v1's.

Images land in OUT as `NNNNN-SEED.png` (NNNNN: the request's row, from 0; the infotext is inside the PNG), with
`batch-state.json` beside them. Run the same command again after a stop: finished requests are skipped, jobs
still queued or running on the server are followed rather than sent twice, and failed ones are tried again.

Only the standard library is used, so this runs on any machine with Python, no Atelier install needed.
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

STATE_FILE = "batch-state.json"
FINISHED = ("done", "failed", "interrupted", "cancelled")


# -- reading requests ------------------------------------------------------------------------------------------


def read_requests(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [{k: _cell(v) for k, v in row.items() if k and v not in (None, "")} for row in csv.DictReader(f)]
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "expand" in data:
        base, expand = data.get("base", {}), data["expand"]
        keys = list(expand)  # the last field varies fastest, as /atelier/v1/batch orders its jobs
        data = [{**base, **dict(zip(keys, values)), **({"type": data["type"]} if "type" in data else {})}
                for values in itertools.product(*(expand[k] for k in keys))]
    elif isinstance(data, dict):
        data = data.get("requests")
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise SystemExit(f"{path}: expected a list of request objects, {{\"requests\": [...]}} or base + expand")
    return data


def _cell(text: str) -> Any:
    """A CSV cell: JSON when it reads as JSON (7, 7.5, true, [1, 2]), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def request_key(index: int, request: dict[str, Any]) -> str:
    """Identifies a row; an edited row is a new request, so its old result is not taken for it."""
    canonical = json.dumps([index, request], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# -- the server ------------------------------------------------------------------------------------------------


class Server:
    def __init__(self, url: str, user: Optional[str] = None, timeout: float = 120.0):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.headers = {"Content-Type": "application/json"}
        if user:
            self.headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"null")
            except ValueError:
                return e.code, {"detail": str(e)}

    def submit(self, request: dict[str, Any]) -> str:
        body = dict(request)
        kind = body.pop("type", None) or ("img2img" if body.get("init_images") else "txt2img")
        status, answer = self.call("POST", f"/atelier/v1/{kind}", body)
        if status != 202:
            raise RequestRefused(f"{answer.get('detail', answer) if isinstance(answer, dict) else answer}")
        return answer["id"]


class RequestRefused(Exception):
    """The server answered 4xx/5xx to a submission (bad field, for example): that row can't run as written."""


# -- the batch ---------------------------------------------------------------------------------------------------


class Batch:
    def __init__(self, server: Server, requests: list[dict[str, Any]], out: Path, in_flight: int, poll: float):
        self.server, self.requests, self.out = server, requests, out
        self.in_flight, self.poll = max(1, in_flight), poll
        self.state_path = out / STATE_FILE
        self.state: dict[str, Any] = self._load_state()

    def _load_state(self) -> dict[str, Any]:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        return {"version": 1, "jobs": {}}

    def _save_state(self) -> None:
        # Written whole and swapped in, so a stop at any moment leaves the old or the new file, never half of one.
        temp = self.state_path.with_name(STATE_FILE + ".tmp")
        temp.write_text(json.dumps(self.state, indent=1), encoding="utf-8")
        os.replace(temp, self.state_path)

    def _finished(self, entry: Optional[dict[str, Any]]) -> bool:
        return bool(entry and entry.get("state") == "done"
                    and all((self.out / name).exists() for name in entry.get("files", [])))

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        keys = [request_key(i, r) for i, r in enumerate(self.requests)]
        jobs = self.state["jobs"]
        todo = [i for i, key in enumerate(keys) if not self._finished(jobs.get(key))]
        print(f"{len(self.requests)} request(s): {len(self.requests) - len(todo)} already done, skipped; "
              f"{len(todo)} to run", flush=True)
        running: dict[int, str] = {}  # request index -> job id
        last_report = 0.0
        while todo or running:
            while todo and len(running) < self.in_flight:
                index = todo.pop(0)
                job_id = self._attach_or_submit(index, keys[index])
                if job_id:
                    running[index] = job_id
            for index, job_id in list(running.items()):
                if self._check(index, keys[index], job_id):
                    del running[index]
            if time.monotonic() - last_report > 2.0 and running:
                self._report(running)
                last_report = time.monotonic()
            if running:
                time.sleep(self.poll)
        return self._summary(keys)

    def _attach_or_submit(self, index: int, key: str) -> Optional[str]:
        """A job sent by an earlier run that the server still has is followed; anything else is (re)sent."""
        entry = self.state["jobs"].get(key)
        if entry and entry.get("job_id") and entry.get("state") == "submitted":
            status, answer = self.server.call("GET", f"/atelier/v1/jobs/{entry['job_id']}")
            if status == 200:
                print(f"[{index}] following job {entry['job_id'][:8]} from the last run ({answer['state']})")
                return entry["job_id"]
        try:
            job_id = self.server.submit(self.requests[index])
        except RequestRefused as e:
            self.state["jobs"][key] = {"index": index, "state": "refused", "error": str(e)}
            self._save_state()
            print(f"[{index}] refused: {e}", flush=True)
            return None
        self.state["jobs"][key] = {"index": index, "job_id": job_id, "state": "submitted"}
        self._save_state()
        return job_id

    def _check(self, index: int, key: str, job_id: str) -> bool:
        """True once the job has ended (its images saved, or its failure recorded)."""
        status, answer = self.server.call("GET", f"/atelier/v1/jobs/{job_id}")
        if status == 404:  # the server restarted, or forgot it: send it again next time round
            self.state["jobs"][key] = {"index": index, "state": "lost"}
            self._save_state()
            print(f"[{index}] job {job_id[:8]} is unknown to the server; run again to resend it", flush=True)
            return True
        if status != 200 or answer["state"] not in FINISHED:
            return False
        entry = {"index": index, "job_id": job_id, "state": answer["state"], "error": answer.get("error")}
        if answer["state"] == "done":
            entry["files"] = self._collect(index, job_id)
        self.state["jobs"][key] = entry
        self._save_state()
        print(f"[{index}] {answer['state']}" + (f": {answer['error']}" if answer.get("error") else
                                                f" -> {', '.join(entry.get('files', []))}"), flush=True)
        return True

    def _collect(self, index: int, job_id: str) -> list[str]:
        status, result = self.server.call("GET", f"/atelier/v1/jobs/{job_id}/result")
        if status != 200:
            raise SystemExit(f"could not fetch the result of job {job_id}: {status} {result}")
        first = int(result.get("info", {}).get("index_of_first_image", 0))  # a grid comes first: skip it
        seeds = result.get("info", {}).get("all_seeds") or []
        names = []
        for n, data in enumerate(result["images"][first:]):
            seed = seeds[n] if n < len(seeds) else n
            name = f"{index:05d}-{seed}.png" if n == 0 else f"{index:05d}-{n}-{seed}.png"
            (self.out / name).write_bytes(base64.b64decode(data))  # the PNG as served, infotext inside
            names.append(name)
        return names

    def _report(self, running: dict[int, str]) -> None:
        parts = []
        for index, job_id in running.items():
            status, answer = self.server.call("GET", f"/atelier/v1/jobs/{job_id}")
            if status == 200:
                parts.append(f"[{index}] {answer['state']} {100 * (answer.get('progress') or 0):.0f}%")
        print("  " + "; ".join(parts), flush=True)

    def _summary(self, keys: list[str]) -> int:
        entries = [self.state["jobs"].get(key, {}) for key in keys]
        done = sum(1 for e in entries if self._finished(e))
        print(f"{done}/{len(keys)} done; images and {STATE_FILE} in {self.out}", flush=True)
        return 0 if done == len(keys) else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("requests", type=Path, help="a .json or .csv file of requests")
    parser.add_argument("--out", type=Path, required=True, help="folder for the images and the state file")
    parser.add_argument("--server", default="http://127.0.0.1:7861", help="Atelier's address (default: %(default)s)")
    parser.add_argument("--user", default=os.environ.get("ATELIER_AUTH"),
                        help="name:password for --api-auth (or set ATELIER_AUTH)")
    parser.add_argument("--in-flight", type=int, default=4,
                        help="jobs queued on the server at once; at least the number of workers (default 4)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between status checks")
    args = parser.parse_args(argv)
    batch = Batch(Server(args.server, args.user), read_requests(args.requests), args.out, args.in_flight, args.poll)
    try:
        return batch.run()
    except KeyboardInterrupt:
        print(f"\nstopped; run the same command again to resume ({batch.state_path})", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
