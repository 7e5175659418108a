"""The Model lifecycle: WaitingForUpload -> Packaging -> Ready | Failed.

An `image` model needs no packaging: it is Ready as soon as its reference is
valid, where the executor can run containers; on one machine without a
container runtime it fails with ContainerRuntimeUnavailable.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.reconcilers.common import (
    NO_WORK,
    Outcome,
    WorkState,
    deleting,
    drive_work,
    settle,
    waiting_for_upload,
)
from dyff.schema import Model


@dataclass(frozen=True)
class ModelWorld:
    upload_present: bool = False
    work: WorkState = NO_WORK
    runs_containers: bool = True


def reconcile_model(model: Model, world: ModelWorld) -> Outcome:
    gone = deleting(model, world.work)
    if gone is not None:
        return gone
    status = model.status.model_copy(deep=True)
    source = model.spec.source
    if source.image is not None:
        if not world.runs_containers:
            settle(
                model,
                status,
                "Failed",
                "False",
                "ContainerRuntimeUnavailable",
                "image models need a container runtime; this executor runs local processes "
                "(use a Kubernetes cluster, or upload the model as transformers or bento)",
            )
            return Outcome(status)
        status.digest = source.image.reference.rsplit("@sha256:", 1)[1]
        settle(model, status, "Ready", "True", "ImageReady", source.image.reference)
        return Outcome(status)
    waiting = waiting_for_upload(model, world.upload_present, world.work, status)
    if waiting is not None:
        return waiting
    return drive_work(model, world.work, "ingest_model", "Packaging", ("Ready",), status)
