"""Count the files and hops one evaluation order crosses, from HTTP to its metrics.

One process runs the whole path that `dyff up` spreads over several: the shim
(`POST /v1/evaluations`, then `GET …/metrics`) through FastAPI's TestClient, the
controller's reconcile passes for the Evaluation until it is Complete, with an
executor that runs the evaluate workload in-process against a model server
started beforehand (its start-up is not part of the path).
Threads the shim answers in are traced too. Every call from a
function in one of the project's files (dyff/, controller/, api_shim/) into a
function in another of them is a hop; the output counts the distinct project
files the path enters and the distinct hops (caller function -> callee function
across files). Tests, the standard library and third-party code do not count.

    .venv/bin/python hack/callpath.py [--list]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "hack" / "bench"))
PROJECT = tuple(str(ROOT / p) + os.sep for p in ("dyff", "controller", "api_shim"))


class Tracer:
    def __init__(self) -> None:
        self.files: set[str] = set()
        self.hops: set[tuple[str, str]] = set()
        # Calls written in one project file into a function of another: (caller, callee).
        self.calls: set[tuple[Any, Any]] = set()

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        callee = frame.f_code.co_filename
        if not callee.startswith(PROJECT):
            return
        self.files.add(callee)
        caller = frame.f_back
        direct = caller is not None and caller.f_code.co_filename.startswith(PROJECT)
        if direct and caller.f_code.co_filename != callee:
            self.calls.add((caller.f_code, frame.f_code))
        # The nearest project frame below: a hop may pass through library code.
        while caller is not None and not caller.f_code.co_filename.startswith(PROJECT):
            caller = caller.f_back
        if caller is not None and caller.f_code.co_filename != callee:
            self.hops.add((_name(caller), _name(frame)))


def _accessor_codes() -> set[Any]:
    """Code of every property getter (and cached property) in the project's modules:
    reading `entity.name` is an attribute read, not a hop to follow."""
    codes: set[Any] = set()
    for module in list(sys.modules.values()):
        if not str(getattr(module, "__file__", "") or "").startswith(PROJECT):
            continue
        for cls in vars(module).values():
            if not isinstance(cls, type):
                continue
            for attr in vars(cls).values():
                getter = getattr(attr, "fget", None) or getattr(attr, "func", None)
                if getter is not None and hasattr(getter, "__code__"):
                    codes.add(getter.__code__)
    return codes


def _code_name(code: Any) -> str:
    return f"{os.path.relpath(code.co_filename, ROOT)}:{code.co_name}"


def _name(frame: Any) -> str:
    rel = os.path.relpath(frame.f_code.co_filename, ROOT)
    return f"{rel}:{frame.f_code.co_name}"


class InProcessExecutor:
    """Runs the evaluate workload in this process when the controller starts it."""

    runs_containers = False

    def __init__(self, records: Any, blobs: Any, model_url: str) -> None:
        self.records, self.blobs, self.model_url = records, blobs, model_url
        self.done: dict[Any, int] = {}

    def state(self, key: Any) -> Any:
        from controller.reconcilers.common import WorkState

        if key in self.done:
            return WorkState("succeeded", self.done[key])
        return WorkState()

    def start(self, key: Any, workload: str, generation: int) -> None:
        from dyff.workloads.evaluate import run_evaluation

        _kind, account, name = key
        run_evaluation(self.records, self.blobs, account, name, model_url=self.model_url)
        self.done[key] = generation

    def stop(self, key: Any) -> None:
        self.done.pop(key, None)

    def work_keys(self) -> list[Any]:
        return list(self.done)

    def close(self) -> None:
        pass


def main() -> int:
    from evaluation_throughput import tiny_vit_untrained
    from fastapi.testclient import TestClient

    from api_shim.app import create_app
    from controller.reconcile import reconcile_one
    from dyff import accounts
    from dyff.models import package_transformers
    from dyff.runtime.serve import serve_bento
    from dyff.schema import Evaluation
    from tests.workloads.evaluation_fixtures import Platform, heldout_examples

    with tempfile.TemporaryDirectory(prefix="dyff-callpath-") as tmp:
        work = Path(tmp)
        model_dir = tiny_vit_untrained(work / "model")
        bento = package_transformers(model_dir, work / "package")
        platform = Platform(work / "platform")
        account = "acme"
        accounts.create_account(platform.records, account, "call path")
        token, _ = accounts.mint_key(platform.records, account)
        platform.add_model("m", model_dir, bento, account=account)
        platform.add_dataset("d", heldout_examples(), 45, account=account)
        app = create_app(platform.records, platform.blobs, cache_dir=work / "cache")
        http = TestClient(app, headers={"authorization": f"Bearer {token}"})
        with serve_bento(bento, bentoml_home=work / "home") as url:
            executor = InProcessExecutor(platform.records, platform.blobs, url)
            order = {"name": "e", "spec": {"model": {"name": "m"}, "dataset": {"name": "d"}}}
            tracer = Tracer()
            # The shim answers in threads of its own (the test client's portal, the
            # thread pool of sync routes): they are new, so this reaches them.
            threading.setprofile(tracer)
            sys.setprofile(tracer)
            try:
                assert http.post("/v1/evaluations", json=order).status_code == 201
                for _ in range(10):
                    reconcile_one(platform.records, platform.blobs, executor, Evaluation,
                                  account, "e")  # fmt: skip
                    if platform.records.get(Evaluation, account, "e").status.phase == "Complete":
                        break
                metrics = http.get("/v1/evaluations/e/metrics")
            finally:
                sys.setprofile(None)
                threading.setprofile(None)  # type: ignore[arg-type]
            assert metrics.status_code == 200, metrics.text
    files = sorted(os.path.relpath(f, ROOT) for f in tracer.files)
    accessors = _accessor_codes()
    calls = {(_code_name(a), _code_name(b)) for a, b in tracer.calls if b not in accessors}
    call_files = {name.split(":")[0] for call in calls for name in call}
    print(json.dumps({"files": len(files), "hops": len(tracer.hops),
                      "calls_files": len(call_files), "calls": len(calls)}))  # fmt: skip
    if "--list" in sys.argv:
        print("\n".join(files))
        print("\n".join(f"{a} -> {b}" for a, b in sorted(tracer.hops)))
        print("# calls")
        print("\n".join(f"{a} -> {b}" for a, b in sorted(calls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
