"""Who may see and use an entity: the one access rule, for the shim, the controller and the
workloads alike; and who may change it: not the HTTP API when Git owns it."""

from __future__ import annotations

from collections.abc import Mapping

from dyff.errors import Conflict
from dyff.schema import Entity


def usable(entity: Entity | None, account: str) -> bool:
    """An entity exists for `account` if it is the account's own, or public (then it may be
    read and used in evaluations, never changed). Anything else answers as not found."""
    if entity is None:
        return False
    return entity.account == account or bool(getattr(entity.spec, "public", False))


# On a record adopted from a custom resource that dyff did not create (kubectl, Argo CD):
# the CR is the source of truth, so the HTTP API must not change or delete it.
MANAGED_BY = "dyff.io/managed-by"
GITOPS = "gitops"
GIT_SOURCE = "dyff.io/git-source"
# How Argo CD marks what it tracks: the annotation (its default since 3.0) or the label.
ARGOCD_TRACKING_ID = "argocd.argoproj.io/tracking-id"
ARGOCD_INSTANCE_LABEL = "app.kubernetes.io/instance"


def cr_owner(
    annotations: Mapping[str, str], labels: Mapping[str, str], made_by_dyff: bool
) -> str | None:
    """Who owns a CR's spec when it is not dyff: its Argo CD application, or whoever
    applied it to the cluster; None for a CR that dyff made from a record."""
    tracking = annotations.get(ARGOCD_TRACKING_ID)
    if tracking:
        return f"Argo CD application {tracking.split(':', 1)[0]}"
    if labels.get(ARGOCD_INSTANCE_LABEL):
        return f"Argo CD application {labels[ARGOCD_INSTANCE_LABEL]}"
    return None if made_by_dyff else "its custom resource in the cluster (kubectl or GitOps)"


def check_api_may_change(entity: Entity) -> None:
    """Refuse (409) a change through the HTTP API to an entity managed from Git."""
    if entity.metadata.annotations.get(MANAGED_BY) == GITOPS:
        source = entity.metadata.annotations.get(GIT_SOURCE) or "its custom resource"
        raise Conflict(
            f"{entity.kind} {entity.name!r} is managed by {source}: change or delete it there",
            field="name",
        )
