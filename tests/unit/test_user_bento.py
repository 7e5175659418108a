"""Users' services without a server: the protocol check of bento.yaml, requirements, the
v1 answer checks, log scrubbing, and the locked-down container command line."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dyff.errors import WorkloadFailed
from dyff.models import (
    bento_digest,
    bento_requirements,
    check_protocol_routes,
    pack_bento,
    unsatisfied,
)
from dyff.runtime.client import (
    PROTOCOL_VIOLATION,
    TOP_K_UNAVAILABLE,
    ServiceClient,
    ServiceError,
    check_labels,
    encoded_batches,
)
from dyff.runtime.container import container_command, cpus, memory_bytes
from dyff.runtime.serve import scrub
from dyff.schema import Resources

# What BentoML 1.4.40 writes into bento.yaml for the example service
# (`list[PIL.Image.Image]` in, `list[dict]` out; `metadata()` -> dict).
MANIFEST: dict[str, Any] = {
    "service": "service:ImageClassifier",
    "entry_service": "image-classifier",
    "schema": {
        "name": "image-classifier",
        "type": "service",
        "routes": [
            {
                "name": "classify_images",
                "route": "/classify_images",
                "batchable": True,
                "input": {
                    "properties": {
                        "images": {
                            "items": {"format": "image", "pil": True, "type": "file"},
                            "title": "Images",
                            "type": "array",
                        }
                    },
                    "required": ["images"],
                    "title": "Input",
                    "type": "object",
                },
                "output": {
                    "items": {"additionalProperties": True, "type": "object"},
                    "type": "array",
                },
            },
            {
                "name": "metadata",
                "route": "/metadata",
                "batchable": False,
                "input": {"properties": {}, "title": "Input", "type": "object"},
                "output": {"additionalProperties": True, "type": "object"},
            },
        ],
    },
}


def manifest_with(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MANIFEST)
    routes = {r["name"]: r for r in doc["schema"]["routes"]}
    for path, value in changes.items():
        api, *keys = path.split("__")
        node = routes[api]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return doc


def refused(manifest: dict[str, Any]) -> str:
    with pytest.raises(WorkloadFailed) as info:
        check_protocol_routes(manifest)
    assert info.value.reason == "UnsupportedBento"
    return info.value.message


def test_protocol_routes_accepted() -> None:
    check_protocol_routes(MANIFEST)  # raises if not


def test_missing_api_is_named() -> None:
    doc = copy.deepcopy(MANIFEST)
    doc["schema"]["routes"] = [r for r in doc["schema"]["routes"] if r["name"] != "metadata"]
    message = refused(doc)
    assert "lacks the API metadata" in message and "'image-classifier'" in message
    doc["schema"]["routes"] = []
    assert "lacks the API metadata and classify_images" in refused(doc)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"classify_images__input__properties__images__type": "string"},
         "classify_images must take images: list[PIL.Image.Image]"),
        ({"classify_images__input__properties__images__items__type": "string"},
         "classify_images must take images: list[PIL.Image.Image]"),
        ({"classify_images__input__required": ["images", "threshold"]},
         "need no input but images, not ['threshold']"),
        ({"classify_images__output__type": "object"}, "classify_images must answer a JSON list"),
        ({"metadata__output__type": "string"}, "metadata must answer a JSON object"),
        ({"metadata__input__required": ["who"]}, "metadata must take no required input"),
    ],
)  # fmt: skip
def test_wrong_io_types_are_named(changes: dict[str, Any], says: str) -> None:
    message = refused(manifest_with(**changes))
    assert says in message and "image-classification/v1" in message


def test_requirements_dyff_meets_and_does_not(tmp_path: Path) -> None:
    assert unsatisfied(["pillow", "numpy>=1", "bentoml", "torch; python_version < '3'"]) == []
    missing = unsatisfied(["numpy<1", "no-such-dist-xyz", "!!", "pkg @ https://x/y.whl"])
    assert missing[0].startswith("numpy<1 (installed: ")
    assert missing[1] == "no-such-dist-xyz (not installed)"
    assert missing[2] == "!! (not a requirement)"
    assert missing[3] == "pkg (from a URL)"
    manifest = {"image": {"python_requirements": "torch\nno-such-dist-xyz\n"}}
    assert bento_requirements(tmp_path, manifest) == ["torch", "no-such-dist-xyz"]
    env = tmp_path / "env" / "python"
    env.mkdir(parents=True)
    (env / "requirements.txt").write_text("# pinned\ntorch\n\npillow  # images\n")
    assert bento_requirements(tmp_path) == ["torch", "pillow"]
    (env / "requirements.txt").write_text("--index-url https://evil.example/simple\ntorch\n")
    with pytest.raises(WorkloadFailed) as info:
        bento_requirements(tmp_path)
    assert info.value.reason == "MissingPackages" and "--index-url" in info.value.message


def test_bento_digest_is_the_content_and_packing_is_deterministic(tmp_path: Path) -> None:
    a = tmp_path / "a"
    (a / "src").mkdir(parents=True)
    (a / "bento.yaml").write_text("service: s:S\n")
    (a / "src" / "service.py").write_text("print('hi')\n")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert bento_digest(a) == bento_digest(b)
    assert (
        pack_bento(a, tmp_path / "a.tgz").read_bytes()
        == pack_bento(b, tmp_path / "b.tgz").read_bytes()
    )
    (b / "src" / "service.py").write_text("print('ho')\n")
    assert bento_digest(a) != bento_digest(b)


def test_the_credentialed_sidecar_never_serves_a_users_bento(tmp_path: Path) -> None:
    """`serve-model` runs in the evaluation Pod, which holds storage credentials: a Bento
    with its own code is refused there (the controller serves those in Pods of their own),
    even one that copies dyff's layout with an edited service."""
    import json

    from dyff.models import SERVICE_NAME, SERVICE_TARGET
    from dyff.stores.file import FileBlobStore
    from dyff.workloads import pod

    bento = tmp_path / "bento-src"
    (bento / "src" / "model").mkdir(parents=True)
    manifest = f"service: '{SERVICE_TARGET}'\nentry_service: {SERVICE_NAME}\n"
    (bento / "bento.yaml").write_text(manifest)
    (bento / "src" / "service.py").write_text("import os  # not dyff's service\n")
    blobs = FileBlobStore(tmp_path / "blobs")
    blobs.put("accounts/acme/bentos/x.bento", pack_bento(bento, tmp_path / "x.tgz").read_bytes())
    environ = {
        pod.WORKLOAD_CONFIG_ENV: json.dumps({"blobsUrl": blobs.url}),
        pod.BENTO_KEY_ENV: "accounts/acme/bentos/x.bento",
        "DYFF_WORK_DIR": str(tmp_path / "work"),
    }
    (tmp_path / "work").mkdir()
    with pytest.raises(SystemExit, match="dyff's own Bentos only"):
        pod.serve_model(environ)


# ------------------------------------------------------------------ protocol v1


def client_with(labels: list[str]) -> ServiceClient:
    c = ServiceClient("http://127.0.0.1:9")
    c._meta = {"protocol": "image-classification/v1", "labels": labels}
    c._index = {name: i for i, name in enumerate(labels)}
    return c


def test_v1_answers_map_names_to_ids() -> None:
    with client_with(["cat", "dog", "eel"]) as c:
        assert c._answer({"labels": ["eel", "cat", "dog"], "scores": [0.7, 0.2, 0.1]}, 2) == (
            [2, 0],
            [0.7, 0.2],
        )


@pytest.mark.parametrize(
    ("answer", "reason", "says"),
    [
        ({"labels": ["cat"], "scores": [1.0]}, TOP_K_UNAVAILABLE, "answered 1 labels"),
        ({"labels": ["cat", "fox"], "scores": [0.5, 0.5]}, PROTOCOL_VIOLATION, "'fox'"),
        ({"labels": ["cat", "cat"], "scores": [0.5, 0.5]}, PROTOCOL_VIOLATION, "twice"),
        ({"labels": ["cat", "dog"], "scores": [0.5]}, PROTOCOL_VIOLATION, "same length"),
        ({"labels": ["cat", "dog"], "scores": ["high", 0.1]}, PROTOCOL_VIOLATION, "numbers"),
        ({"labels": ["cat", "dog"], "scores": [float("nan"), 0.1]}, PROTOCOL_VIOLATION,
         "finite"),
        (["cat", "dog"], PROTOCOL_VIOLATION, "{labels: [...], scores: [...]}"),
    ],
)  # fmt: skip
def test_v1_bad_answers_are_named(answer: Any, reason: str, says: str) -> None:
    with client_with(["cat", "dog", "eel"]) as c, pytest.raises(ServiceError) as info:
        c._answer(answer, 2)
    assert info.value.reason == reason and says in info.value.message


def test_v1_labels_are_checked() -> None:
    assert check_labels(["a", "b"]) == ["a", "b"]
    for bad in ([], ["a", "a"], ["a", ""], "ab", [1, 2], None):
        with pytest.raises(ValueError):
            check_labels(bad)


def test_encoded_batches_keep_the_files_and_bound_requests() -> None:
    files = [bytes([i]) * 10 for i in range(7)]
    assert [len(b) for b in encoded_batches(files, 3)] == [3, 3, 1]
    assert [len(b) for b in encoded_batches(files, 100, max_bytes=25)] == [2, 2, 2, 1]
    assert [d for b in encoded_batches(files, 3) for d in b] == files
    assert list(encoded_batches([b"x" * 100], 5, max_bytes=10)) == [[b"x" * 100]]


def test_scrub_removes_this_machines_paths() -> None:
    text = (
        f'File "{sys.prefix}/lib/python3.11/site-packages/bentoml/x.py", line 3\n'
        'File "/srv/dyff/scratch/evaluate-1/serve/bento-ab/src/service.py", line 29\n'
        "RuntimeError: no weights at /var/lib/dyff/blobs/accounts/acme/x.bin"
    )
    out = scrub(text, "/srv/dyff/scratch/evaluate-1/serve/bento-ab")
    assert "/srv/" not in out and "/var/" not in out and sys.prefix not in out
    assert 'File "<bento>/src/service.py", line 29' in out
    assert "x.py" in out and "x.bin" in out


# ------------------------------------------------------------------ containers

REFERENCE = "registry.example/team/classifier@sha256:" + "ab" * 32


def test_container_command_is_locked_down() -> None:
    cmd = container_command(
        "docker", REFERENCE, port=3000, host_port=41234, name="dyff-model-x",
        resources=Resources(cpu="1500m", memory="2Gi"),
    )  # fmt: skip
    assert cmd[:2] == ["docker", "run"] and cmd[-1] == REFERENCE
    line = " ".join(cmd)
    for expected in (
        "--publish 127.0.0.1:41234:3000",
        "--read-only",
        "--tmpfs /tmp:rw,nosuid,nodev,size=1g",
        "--tmpfs /work:rw,nosuid,nodev,size=1g",
        "--cap-drop ALL",
        "--security-opt no-new-privileges",
        "--user 10001:10001",
        "--pids-limit 1024",
        f"--memory {2 << 30}",
        "--cpus 1.5",
        "--network bridge",
    ):
        assert expected in line, expected
    # No mounts of the host, no privileges, no environment of dyff's.
    for forbidden in ("-v", "--volume", "--mount", "--privileged", "--env-file", "--rm"):
        assert forbidden not in cmd
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--env"] == [
        "HOME=/tmp", "BENTOML_HOME=/tmp/bentoml", "BENTOML_DO_NOT_TRACK=true",
    ]  # fmt: skip
    podman = container_command("podman", REFERENCE, port=8080, host_port=5, name="n")
    assert "slirp4netns:allow_host_loopback=false" in podman
    assert "--memory" not in podman and "--cpus" not in podman
    gpu = container_command(
        "docker", REFERENCE, port=1, host_port=2, name="n", resources=Resources(gpu=1)
    )
    assert "--gpus" in gpu
    with pytest.raises(ValueError):
        container_command("lxc", REFERENCE, port=1, host_port=2, name="n")


def test_quantities() -> None:
    assert memory_bytes("512Mi") == 512 << 20 and memory_bytes("1G") == 10**9
    assert memory_bytes("1000") == 1000 and memory_bytes("1.5Gi") == 3 << 29
    assert cpus("2") == "2" and cpus("250m") == "0.25"
    for bad in ("lots", "-1"):
        with pytest.raises(ValueError):
            memory_bytes(bad)
    with pytest.raises(ValueError):
        cpus("0")


def _engine_works() -> str | None:
    for engine in ("docker", "podman"):
        if shutil.which(engine) is None:
            continue
        try:
            ok = subprocess.run([engine, "info"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return engine
    return None


@pytest.mark.slow
@pytest.mark.skipif(_engine_works() is None, reason="no working docker or podman engine here")
def test_container_that_cannot_start_fails_and_is_removed() -> None:
    """Where an engine works: an image that cannot be run (a digest no registry has) fails
    with ContainerFailed within the start timeout, and no container is left behind."""
    engine = _engine_works()
    assert engine is not None
    from dyff.runtime.container import ContainerFailed, run_container

    with (
        pytest.raises(ContainerFailed),
        run_container(
            engine, "docker.io/library/busybox@sha256:" + "0" * 64, 3000, startup_timeout=20
        ),
    ):
        pass
    leftovers = subprocess.run(
        [engine, "ps", "-a", "--filter", "label=dyff.io/model-server=true", "-q"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert leftovers.stdout.strip() == ""
