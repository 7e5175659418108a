"""End to end on a real cluster: the samples of config/samples, applied to the kind cluster
that `hack/kind-up.sh` makes, end with the Evaluation Complete.

Opt-in by nature: it needs docker with a running engine, kind, kubectl and a kind
cluster named `dyff` (run `hack/kind-up.sh` first). Without any of them it skips and
says which is missing.

What it does: it trains the tiny digits ViT and writes the held-out digits as Parquet
(no hub), uploads both into the cluster's GCS emulator under the demo account's prefix
of the controller's blob store (a `uri` source must lie there), applies every sample
with those URIs and their real sha256 and size, and waits for the Evaluation to reach
phase Complete with Ready=True and metrics, reading `kubectl get -o json`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "config" / "samples"
CLUSTER = os.environ.get("KIND_CLUSTER", "dyff")
CONTEXT = f"kind-{CLUSTER}"
SYSTEM = "dyff-system"
TIMEOUT_S = float(os.environ.get("DYFF_E2E_TIMEOUT", "1500"))

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _run(
    *cmd: str, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, input=stdin, check=False
    )


def kind_missing() -> str | None:
    """Why the kind cluster cannot be used (everything that is missing), or None."""
    reasons = [f"no {t} on PATH" for t in ("kubectl", "kind", "docker") if not shutil.which(t)]
    if shutil.which("docker"):
        try:
            engine = _run("docker", "info", timeout=20).returncode == 0
        except subprocess.TimeoutExpired:
            engine = False
        if not engine:
            reasons.append("no docker engine reachable (`docker info` fails)")
    if reasons:
        return "; ".join(reasons) + " - hack/kind-up.sh needs docker, kind and kubectl"
    clusters = _run("kind", "get", "clusters", timeout=20).stdout.split()
    if CLUSTER not in clusters:
        return f"no kind cluster named {CLUSTER} (run hack/kind-up.sh)"
    return None


def kubectl(*args: str, stdin: str | None = None, timeout: float = 60) -> str:
    proc = _run("kubectl", "--context", CONTEXT, *args, stdin=stdin, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def get_json(*args: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json"))
    return obj


@pytest.fixture(scope="module")
def cluster() -> None:
    reason = kind_missing()
    if reason:
        pytest.skip(reason)
    kubectl("-n", SYSTEM, "rollout", "status", "deployment/dyff-controller", "--timeout=120s")


def controller_env() -> dict[str, str]:
    deployment = get_json("-n", SYSTEM, "deployment", "dyff-controller")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(get_json("-n", SYSTEM, "configmap", name)["data"])
    return env


@contextlib.contextmanager
def port_forward(service: str, port: int) -> Iterator[int]:
    """A local port forwarded to a Service of dyff-system."""
    proc = subprocess.Popen(
        [
            "kubectl",
            "--context",
            CONTEXT,
            "-n",
            SYSTEM,
            "port-forward",
            f"svc/{service}",
            f":{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, f"kubectl port-forward said: {line!r}"
        yield int(match.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def build_artifacts(tmp: Path) -> dict[str, Path]:
    """The tiny digits ViT as a tar.gz of its folder, and the held-out digits as Parquet."""
    from dyff import tinymodels
    from tests.workloads.dataset_fixtures import write_parquet

    model_dir = tinymodels.train_tiny_vit(tmp / "model", seconds_budget=60)
    archive = tmp / "digits-vit.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    _, test = tinymodels.digits_splits()
    examples = list(zip(tinymodels.digits_png(test.images), map(int, test.labels), strict=True))
    parquet = write_parquet(tmp / "digits-test.parquet", examples)
    return {"Model": archive, "Dataset": parquet}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def samples_with(uris: dict[str, tuple[str, Path]]) -> list[dict[str, Any]]:
    """Every sample; those with a `uri` source point at the uploaded artifact instead."""
    docs = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        doc = copy.deepcopy(yaml.safe_load(path.read_text()))
        source = doc["spec"].get("source", {})
        if "uri" in source:
            uri, artifact = uris[doc["kind"]]
            source["uri"] = {
                "uri": uri,
                "sha256": sha256(artifact),
                "sizeBytes": artifact.stat().st_size,
            }
        docs.append(doc)
    return docs


@pytest.mark.timeout(TIMEOUT_S + 600)
def test_samples_reach_complete_on_kind(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dyff import layout
    from dyff.config import parse_blobs_url
    from dyff.stores import open_blobs

    env = controller_env()
    assert parse_blobs_url(env["DYFF_BLOBS_URL"])[0] == "gs", (
        "the kind overlay uses the GCS emulator"
    )
    samples = [yaml.safe_load(p.read_text()) for p in sorted(SAMPLES.glob("*.yaml"))]
    namespaces = {d["metadata"]["namespace"] for d in samples}
    assert len(namespaces) == 1, namespaces
    (account,) = namespaces
    (evaluation,) = [d["metadata"]["name"] for d in samples if d["kind"] == "Evaluation"]

    artifacts = build_artifacts(tmp_path)
    uris: dict[str, tuple[str, Path]] = {}
    with port_forward("dyff-gcs", 9023) as port:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        blobs = open_blobs(env["DYFF_BLOBS_URL"])
        for kind, artifact in artifacts.items():
            key = f"{layout.account_prefix(account)}/e2e/{artifact.name}"
            blobs.put(key, artifact.read_bytes(), sha256=sha256(artifact))
            uris[kind] = (blobs.uri(key), artifact)

    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": account}},
        *samples_with(uris),
    ]
    manifest = yaml.safe_dump_all(docs)
    kubectl("apply", "-f", "-", stdin=manifest)
    try:
        status = wait_for_phase(account, evaluation, "Complete")
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", ready
        assert status["metrics"]["accuracy"] > 0.5, status["metrics"]
        assert status.get("resultsUri"), status
    finally:
        kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=manifest)


def wait_for_phase(namespace: str, name: str, phase: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = get_json("-n", namespace, "evaluations.dyff.io", name)
        status = obj.get("status") or {}
        if status.get("phase") == phase:
            return status
        if status.get("phase") == "Failed":
            raise AssertionError(f"Evaluation {name} Failed: {json.dumps(status, indent=2)}")
        time.sleep(5)
    raise AssertionError(f"Evaluation {name} not {phase} in {TIMEOUT_S:.0f} s: {status}")
