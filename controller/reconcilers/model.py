"""The Model lifecycle: WaitingForUpload -> Packaging -> Ready | Failed (Deleting on
deletion); the phases and what they mean are `dyff.lifecycle.MODEL`.

An `image` model needs no packaging: it is Ready as soon as its reference is
valid, where the executor can run containers; on one machine without a
container runtime it fails with ContainerRuntimeUnavailable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.reconcilers.common import (
    NO_WORK,
    Outcome,
    Reconciler,
    Stores,
    WorkState,
    deleting,
    drive_work,
    waiting_for_upload,
)
from dyff import uploads
from dyff.lifecycle import MODEL, settle
from dyff.lifecycle import ModelPhase as Phase
from dyff.schema import Model

if TYPE_CHECKING:
    from controller.executors import Executor


@dataclass(frozen=True)
class ModelWorld:
    upload_present: bool = False
    work: WorkState = NO_WORK
    runs_containers: bool = True


def observe(stores: Stores, executor: Executor, work: WorkState, model: Model) -> ModelWorld:
    # Only an image model asks whether containers run here (locally, a `docker info`).
    containers = executor.runs_containers if model.spec.source.image is not None else True
    return ModelWorld(uploads.upload_present(stores.blobs, model), work, containers)


def decide(model: Model, world: ModelWorld) -> Outcome:
    gone = deleting(model, MODEL)
    if gone is not None:
        return gone
    status = model.status.model_copy(deep=True)
    generation = model.metadata.generation
    source = model.spec.source
    if source.image is not None:
        if not world.runs_containers:
            settle(
                status,
                Phase.FAILED,
                "False",
                "ContainerRuntimeUnavailable",
                "image models need a container runtime, and this machine has none (no "
                "working docker or podman); use a Kubernetes cluster, or upload the model "
                "as transformers or bento",
                generation,
            )
            return Outcome(status)
        status.digest = source.image.reference.rsplit("@sha256:", 1)[1]
        status.user_code = True  # its owner's own service: served isolated, spoken to by v1
        settle(status, Phase.READY, "True", "ImageReady", source.image.reference, generation)
        return Outcome(status)
    waiting = waiting_for_upload(
        model, world.upload_present, world.work, MODEL, Phase.WAITING_FOR_UPLOAD, status
    )
    if waiting is not None:
        return waiting
    return drive_work(model, world.work, "ingest_model", MODEL, status)


RECONCILER = Reconciler(Model, MODEL, observe, decide)
