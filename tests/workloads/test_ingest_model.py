"""The ingest_model workload against SqliteRecordStore + FileBlobStore."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dyff import layout
from dyff.errors import WorkloadFailed
from dyff.models import import_bento_archive, local_image_support, model_digest
from dyff.schema import (
    ImageSource,
    Model,
    ModelSource,
    ModelSpec,
    ObjectMeta,
    UploadSource,
    UriSource,
)
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from dyff.workloads.common import WorkloadConfig
from dyff.workloads.ingest_model import discard, run

ACCOUNT = "acme"
BENTOS = f"accounts/{ACCOUNT}/bentos/"


@dataclass
class Env:
    records: SqliteRecordStore
    blobs: FileBlobStore
    root: Path

    def config(self, name: str) -> WorkloadConfig:
        return WorkloadConfig(
            records_url=f"sqlite://{self.root / 'records.db'}",
            blobs_url=self.blobs.url,
            account=ACCOUNT,
            name=name,
            scratch_dir=str(self.root / "scratch"),
        )

    def model(self, name: str) -> Model:
        return self.records.get(Model, ACCOUNT, name)

    def keys(self, prefix: str = "") -> list[str]:
        return [b.key for b in self.blobs.list(prefix)]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(
        SqliteRecordStore(tmp_path / "records.db"), FileBlobStore(tmp_path / "blobs"), tmp_path
    )


def tar_gz(folder: Path, arcname: str = "model") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return buf.getvalue()


def zipped(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(folder.rglob("*")):
            z.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()


def upload(env: Env, name: str, data: bytes, form: str = "transformers") -> Model:
    """Put an upload where the shim would, and create the Model record."""
    sha = hashlib.sha256(data).hexdigest()
    env.blobs.put(layout.upload_key(ACCOUNT, "Model", name, sha), data, sha256=sha)
    source = ModelSource(form=form, upload=UploadSource(sha256=sha, size_bytes=len(data)))
    return create(env, name, source)


def create(env: Env, name: str, source: ModelSource) -> Model:
    model = Model(metadata=ObjectMeta(name=name, namespace=ACCOUNT), spec=ModelSpec(source=source))
    return env.records.create(model)[0]


def failed(env: Env, name: str) -> tuple[WorkloadFailed, Model]:
    with pytest.raises(WorkloadFailed) as info:
        run(env.config(name))
    return info.value, env.model(name)


def assert_failed(model: Model, reason: str) -> None:
    assert model.status.phase == "Failed"
    ready = model.status.condition("Ready")
    assert ready is not None and ready.status == "False" and ready.reason == reason
    assert model.status.digest is None and model.status.bento_uri is None
    assert model.status.observed_generation == model.metadata.generation


def seed_bento(env: Env, tiny_bento: Path, digest: str) -> str:
    """Store the session's Bento as if an earlier ingestion had made it."""
    key = layout.bento_key(ACCOUNT, digest)
    env.blobs.put(key, tiny_bento.read_bytes())
    return key


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_transformers_upload_packaged_stored_and_reused(
    env: Env, tiny_model_dir: Path, tmp_path: Path
) -> None:
    upload(env, "digits", tar_gz(tiny_model_dir))
    run(env.config("digits"))

    m = env.model("digits")
    digest = model_digest(tiny_model_dir)
    key = layout.bento_key(ACCOUNT, digest)
    assert m.status.phase == "Ready"
    assert m.status.digest == digest
    assert m.status.bento_uri == env.blobs.uri(key)
    assert m.status.labels == [str(i) for i in range(10)]
    stat = env.blobs.stat(key)
    assert stat is not None and m.status.size_bytes == stat.size
    ready = m.status.condition("Ready")
    assert ready is not None and (ready.status, ready.reason) == ("True", "Packaged")
    assert m.status.observed_generation == 1
    assert env.keys(BENTOS) == [key]
    # What is stored is a Bento of the same model.
    stored = env.blobs.download(key, tmp_path / "stored.bento")
    assert model_digest(import_bento_archive(stored, tmp_path / "imp").info.root) == digest

    # The same model, zipped without a top folder and with a README: reused, not rebuilt.
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    (copy / "README.md").write_text("same weights\n")
    before = (env.blobs.path(key).stat().st_mtime_ns, env.blobs.path(key).stat().st_ino)
    upload(env, "digits-again", zipped(copy))
    run(env.config("digits-again"))
    again = env.model("digits-again")
    assert again.status.phase == "Ready" and again.status.digest == digest
    ready = again.status.condition("Ready")
    assert ready is not None and ready.reason == "Reused"
    assert (env.blobs.path(key).stat().st_mtime_ns, env.blobs.path(key).stat().st_ino) == before
    assert env.keys(BENTOS) == [key]


def test_bento_form_upload(env: Env, tiny_model_dir: Path, tiny_bento: Path) -> None:
    digest = model_digest(tiny_model_dir)
    key = seed_bento(env, tiny_bento, digest)
    upload(env, "as-bento", tiny_bento.read_bytes(), form="bento")
    run(env.config("as-bento"))
    m = env.model("as-bento")
    assert (m.status.phase, m.status.digest) == ("Ready", digest)
    assert m.status.bento_uri == env.blobs.uri(key)
    assert m.status.labels == [str(i) for i in range(10)]


def test_uri_source_in_own_account(env: Env, tiny_model_dir: Path, tiny_bento: Path) -> None:
    seed_bento(env, tiny_bento, model_digest(tiny_model_dir))
    data = tar_gz(tiny_model_dir)
    sha = hashlib.sha256(data).hexdigest()
    key = f"accounts/{ACCOUNT}/incoming/digits.tar.gz"
    env.blobs.put(key, data)
    create(
        env,
        "by-uri",
        ModelSource(form="transformers", uri=UriSource(uri=env.blobs.uri(key), sha256=sha)),
    )
    run(env.config("by-uri"))
    assert env.model("by-uri").status.phase == "Ready"


@pytest.mark.parametrize(
    "uri",
    [
        "accounts/other/incoming/digits.tar.gz",  # another account's blob
        "file:///etc/passwd",  # the host's files
        "gs://some-bucket/accounts/acme/x.tar.gz",  # a bucket that is not the store
    ],
)
def test_uri_source_outside_account_refused(env: Env, tiny_model_dir: Path, uri: str) -> None:
    data = tar_gz(tiny_model_dir)
    if not uri.startswith(("file:", "gs:")):
        env.blobs.put(uri, data)
        uri = env.blobs.uri(uri)
    sha = hashlib.sha256(data).hexdigest()
    create(env, "stray", ModelSource(form="transformers", uri=UriSource(uri=uri, sha256=sha)))
    exc, m = failed(env, "stray")
    assert exc.reason == "UnsupportedSource"
    assert_failed(m, "UnsupportedSource")
    assert env.keys(BENTOS) == []


def test_declared_sha256_must_match(env: Env, tiny_model_dir: Path) -> None:
    data = tar_gz(tiny_model_dir)
    key = f"accounts/{ACCOUNT}/incoming/digits.tar.gz"
    env.blobs.put(key, data)
    wrong = hashlib.sha256(b"something else").hexdigest()
    create(
        env,
        "liar",
        ModelSource(form="transformers", uri=UriSource(uri=env.blobs.uri(key), sha256=wrong)),
    )
    _, m = failed(env, "liar")
    assert_failed(m, "SourceMismatch")


def test_missing_upload(env: Env) -> None:
    create(
        env,
        "ghost",
        ModelSource(form="transformers", upload=UploadSource(sha256="b" * 64, size_bytes=10)),
    )
    _, m = failed(env, "ghost")
    assert_failed(m, "SourceNotFound")


# --------------------------------------------------------------------- refusals


def _pickle(m: Path) -> None:
    (m / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")


def _auto_map(m: Path) -> None:
    _edit(m, lambda c: c.update(auto_map={"AutoModelForImageClassification": "x.Y"}))


def _wrong_arch(m: Path) -> None:
    _edit(m, lambda c: c.update(architectures=["ViTForMaskedImageModeling"]))


def _no_labels(m: Path) -> None:
    _edit(m, lambda c: (c.pop("id2label"), c.pop("label2id")))


def _edit(m: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    config = json.loads((m / "config.json").read_text())
    change(config)
    (m / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_pickle, "PickleWeights"),
        (_auto_map, "RemoteCode"),
        (_wrong_arch, "UnsupportedArchitecture"),
        (_no_labels, "MissingLabels"),
    ],
)
def test_refused_models_fail_and_leave_nothing(
    env: Env, tiny_model_dir: Path, tmp_path: Path, spoil: Callable[[Path], None], reason: str
) -> None:
    bad = shutil.copytree(tiny_model_dir, tmp_path / "bad")
    spoil(bad)
    upload(env, "bad", tar_gz(bad))
    uploads = env.keys()
    exc, m = failed(env, "bad")
    assert exc.reason == reason
    assert_failed(m, reason)
    assert m.status.message == exc.message
    # Only the user's upload is left; no scratch space either.
    assert env.keys() == uploads and env.keys(BENTOS) == []
    assert list((env.root / "scratch").iterdir()) == []


def test_unsafe_archive_refused(env: Env) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        member = tarfile.TarInfo("../../../tmp/evil")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    upload(env, "evil", buf.getvalue())
    _, m = failed(env, "evil")
    assert_failed(m, "UnsafeArchive")


def test_image_form_without_container_runtime(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    if local_image_support().available:
        pytest.skip("this machine has a working container engine")
    ref = f"registry.example.com/team/model@sha256:{'c' * 64}"
    create(env, "img", ModelSource(form="image", image=ImageSource(reference=ref)))
    exc, m = failed(env, "img")
    assert_failed(m, "ContainerRuntimeUnavailable")
    assert "container runtime" in exc.message
    assert env.keys() == []


def test_image_form_in_kubernetes(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    ref = f"registry.example.com/team/model:v1@sha256:{'c' * 64}"
    create(env, "img", ModelSource(form="image", image=ImageSource(reference=ref)))
    run(env.config("img"))
    m = env.model("img")
    assert (m.status.phase, m.status.digest, m.status.bento_uri) == ("Ready", "c" * 64, None)
    ready = m.status.condition("Ready")
    assert ready is not None and ready.reason == "ImageAccepted"


def test_cli_exit_code_and_record(env: Env, tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = shutil.copytree(tiny_model_dir, tmp_path / "bad")
    _pickle(bad)
    upload(env, "cli", tar_gz(bad))
    config = tmp_path / "config.json"
    config.write_text(env.config("cli").model_dump_json(by_alias=True))
    proc = subprocess.run(
        [sys.executable, "-m", "dyff.workloads.ingest_model", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "PickleWeights" in proc.stderr
    assert_failed(env.model("cli"), "PickleWeights")


def test_discard_keeps_bentos_other_models_use(env: Env) -> None:
    shared = layout.bento_key(ACCOUNT, "d" * 64)
    mine = layout.bento_key(ACCOUNT, "e" * 64)
    env.blobs.put(shared, b"bento")
    env.blobs.put(mine, b"bento")
    other = create(
        env,
        "other",
        ModelSource(form="transformers", upload=UploadSource(sha256="f" * 64, size_bytes=1)),
    )

    def ready(m: Model) -> None:
        m.status.phase, m.status.digest = "Ready", "d" * 64

    env.records.mutate(Model, ACCOUNT, other.name, ready)
    discard(env.records, env.blobs, ACCOUNT, "me", [shared, mine])
    assert env.keys(BENTOS) == [shared]
