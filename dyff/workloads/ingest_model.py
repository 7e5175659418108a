"""Ingest a Model: `python -m dyff.workloads.ingest_model --config FILE`.

Reads the Model record and, by the form of its source:

- `transformers`: fetches the archive (tar, tar.gz or zip of the model
  folder), extracts it with `dyff.archives` checks, validates it
  (`dyff.models.validate_transformers_dir`), and packages it into a Bento;
- `bento`: fetches the Bento archive and checks it
  (`dyff.models.import_bento_archive`). dyff's own Bento: the model inside is
  repackaged (the archive's code is never run). A user's service (any other
  Bento that declares the protocol image-classification/v1): stored as it is
  (`userCode: true`). On one machine it is served once first, in its own
  process without credentials (`dyff.runtime.serve.probe_service`): its
  labels come from its `/metadata`, and one image is classified; a service
  that does not start fails the model (ModelServerFailed, with the tail of
  its log). On Kubernetes this workload holds storage credentials, so it
  never runs user code: the labels stay unknown until an evaluation serves
  the model in a Pod of its own;
- `image`: checks the digest-pinned reference and that containers can be run
  here (`dyff.models.local_image_support`); nothing is stored (`userCode`).

The Bento is stored content-addressed at `layout.bento_key(account, digest)`,
where `digest` is `dyff.models.model_digest` of the validated model folder
(`dyff.models.bento_digest` of a user's whole Bento);
when that key already exists (the same model, ingested before in this
account) it is reused and nothing is rebuilt. The record then gets phase
Ready with digest, bentoUri, labels and sizeBytes, and Ready=True. A bad
model gives phase Failed with Ready=False and the reason; the run then leaves
behind no blob it wrote (a reused Bento stays: others use it).

Where the source comes from:
- `upload`: the blob `layout.upload_key(account, "Model", name, sha256)`.
- `uri`: only objects of the configured blob store, and only under the
  owning account's prefix (`accounts/<account>/…`), named as the store names
  them (`blobs.uri(key)`: `local:///accounts/…` or `gs://bucket/prefix/accounts/…`).
  Anything else is refused
  (reason `UnsupportedSource`): a workload must not read its host's files,
  another account's blobs, or buckets its service account happens to reach.
In both cases the declared sha256 (and size, if given) must match.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dyff import layout
from dyff.errors import WorkloadFailed
from dyff.models import (
    CONTAINER_RUNTIME_UNAVAILABLE,
    ImportedBento,
    extract_archive,
    import_bento_archive,
    local_image_support,
    model_digest,
    pack_bento,
    package_transformers,
    validate_image_reference,
    validate_transformers_dir,
)
from dyff.schema import Model
from dyff.stores.blobs import CHUNK, BlobStore
from dyff.stores.records import RecordStore
from dyff.workloads.common import (
    IngestReport,
    WorkloadConfig,
    fetch_source,
    run_ingestion,
    run_main,
)

log = logging.getLogger("dyff.workloads.ingest_model")


@dataclass(frozen=True)
class Ingested:
    digest: str
    bento_uri: str | None
    labels: list[str] | None
    size_bytes: int | None
    reused: bool
    user_code: bool = False


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def ingest(model: Model, blobs: BlobStore, scratch: Path, written: list[str]) -> Ingested:
    """Validate and package; store the Bento unless stored already. Keys stored go to `written`."""
    src = model.spec.source
    if src.form == "image":
        assert src.image is not None
        ref = validate_image_reference(src.image.reference)
        support = local_image_support()
        if not support.available:
            raise WorkloadFailed(CONTAINER_RUNTIME_UNAVAILABLE, support.message)
        # The image digest is the model's identity; labels come from its /metadata when served.
        return Ingested(ref.digest, None, None, None, reused=False, user_code=True)

    source = fetch_source(model, blobs, scratch / "source")
    if src.form == "transformers":
        info = validate_transformers_dir(extract_archive(source, scratch / "model"))
    else:
        imported = import_bento_archive(source, scratch / "import")
        if imported.user_code:
            return ingest_user_bento(model, imported, blobs, scratch, written)
        assert imported.info is not None
        info = imported.info
    digest = model_digest(info.root, info.files)
    key = layout.bento_key(model.account, digest)
    existing = blobs.stat(key)
    if existing is not None:
        log.info("%s/%s: reusing the stored Bento %s", model.account, model.name, key)
        return Ingested(digest, blobs.uri(key), info.labels, existing.size, reused=True)
    archive = package_transformers(info.root, scratch / "package", info=info, digest=digest)
    size = archive.stat().st_size
    with open(archive, "rb") as f:
        blobs.put(key, f, sha256=_file_sha256(archive), size=size)
    written.append(key)
    log.info("%s/%s: stored Bento %s (%d bytes)", model.account, model.name, key, size)
    return Ingested(digest, blobs.uri(key), info.labels, size, reused=False)


def on_kubernetes() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def ingest_user_bento(
    model: Model, imported: ImportedBento, blobs: BlobStore, scratch: Path, written: list[str]
) -> Ingested:
    """Store a user's Bento (its own code, as uploaded) under its content digest. On one
    machine it is test-served first, for its labels; on Kubernetes it is not run here."""
    # Packed first: the probe serves the very bytes that are stored, and whatever the
    # service writes while it runs cannot change them.
    archive = pack_bento(imported.bento_dir, scratch / "user.bento")
    labels = None
    if not on_kubernetes():
        from dyff.runtime.serve import probe_service

        labels = probe_service(archive, scratch / "probe")
    key = layout.bento_key(model.account, imported.digest)
    existing = blobs.stat(key)
    if existing is not None:
        log.info("%s/%s: reusing the stored Bento %s", model.account, model.name, key)
        return Ingested(
            imported.digest, blobs.uri(key), labels, existing.size, reused=True, user_code=True
        )
    size = archive.stat().st_size
    with open(archive, "rb") as f:
        blobs.put(key, f, sha256=_file_sha256(archive), size=size)
    written.append(key)
    log.info("%s/%s: stored the user's Bento %s (%d bytes)", model.account, model.name, key, size)
    return Ingested(imported.digest, blobs.uri(key), labels, size, reused=False, user_code=True)


def discard(
    records: RecordStore, blobs: BlobStore, account: str, name: str, written: list[str]
) -> None:
    """Delete the blobs this run stored, unless another Model of the account now uses them."""
    if not written:
        return
    in_use = {
        layout.bento_key(account, m.status.digest)
        for m in records.list_all(Model, account)
        if m.name != name and m.status.digest
    }
    for key in written:
        if key not in in_use:
            blobs.delete(key)


def run(config: WorkloadConfig) -> None:
    written: list[str] = []

    def ingested(model: Model, blobs: BlobStore, scratch: Path) -> IngestReport:
        result = ingest(model, blobs, scratch, written)
        if model.spec.source.form == "image":
            reason, msg = "ImageAccepted", f"image pinned at sha256:{result.digest}"
        elif result.user_code:
            how = "same as the stored" if result.reused else "stored as"
            served = f"; serves {len(result.labels)} labels" if result.labels is not None else ""
            reason, msg = "UserService", f"the user's service, {how} Bento {result.digest[:12]}"
            msg += served
        elif result.reused:
            reason, msg = "Reused", f"same model as the stored Bento {result.digest[:12]}"
        else:
            reason, msg = "Packaged", f"packaged as Bento {result.digest[:12]}"
        results = {
            "digest": result.digest,
            "bento_uri": result.bento_uri,
            "labels": result.labels,
            "size_bytes": result.size_bytes,
            "user_code": result.user_code,
        }
        return IngestReport(reason, msg, results)

    def discard_written(records: RecordStore, blobs: BlobStore) -> None:
        discard(records, blobs, config.account, config.name, written)

    fields = ("digest", "bento_uri", "labels", "size_bytes")
    run_ingestion(config, Model, ingested, discard_written, fields)


def main(argv: list[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
