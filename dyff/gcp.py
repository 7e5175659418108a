"""The Google Cloud side of a GKE installation, as gcloud commands (`hack/gcp-setup.sh`,
`dyff admin gcp-setup`, `dyff admin gcp-account`).

What config/overlays/gke and config/cloudrun assume, made so: the APIs, the bucket, the
Artifact Registry repository users' Bentos are pushed to, four Google service accounts
and their roles —

- dyff-controller: Datastore user, object admin on the bucket, token creator on itself
  (it signs the URL an image builder fetches a Bento with), Workload Identity for
  dyff-system/dyff-controller;
- dyff-shim (Cloud Run): Datastore user, object admin on the bucket, token creator on
  itself (signed upload URLs);
- dyff-workload: Datastore user, object admin on the bucket; Workload Identity per
  account namespace (`gcp-account`);
- dyff-image-builder: writer on the one repository, nothing else; Workload Identity per
  account namespace. Model servers' ServiceAccount is bound to nothing.

Every step is idempotent: a resource is created only where `describe` does not find it,
and IAM bindings are added (adding one that exists changes nothing). Dry run by default:
the commands are printed, nothing runs; `--apply` runs them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SERVICES = (
    "container.googleapis.com",
    "datastore.googleapis.com",
    "storage.googleapis.com",
    "artifactregistry.googleapis.com",
    "iamcredentials.googleapis.com",
    "run.googleapis.com",
)
REPOSITORY = "dyff-models"
CONTROLLER, SHIM, WORKLOAD, BUILDER = (
    "dyff-controller",
    "dyff-shim",
    "dyff-workload",
    "dyff-image-builder",
)
# The Kubernetes ServiceAccounts (config/base, config/overlays/gke) each one serves.
WORKLOAD_KSA, BUILDER_KSA = "dyff-workload", "dyff-image-builder"
CONTROLLER_KSA = "dyff-system/dyff-controller"


@dataclass(frozen=True)
class Step:
    """One command; with `unless`, run only where that command fails (the resource is
    missing)."""

    command: tuple[str, ...]
    unless: tuple[str, ...] | None = None

    def render(self) -> str:
        cmd = shlex.join(self.command)
        return f"{shlex.join(self.unless)} >/dev/null 2>&1 || {cmd}" if self.unless else cmd


def email(name: str, project: str) -> str:
    return f"{name}@{project}.iam.gserviceaccount.com"


def _check(project: str, bucket: str, location: str | None = None) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", project):
        raise ValueError(f"{project!r} is not a Google Cloud project id")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", bucket):
        raise ValueError(f"{bucket!r} is not a bucket name")
    if location is not None and not re.fullmatch(r"[a-z]+(-[a-z]+[0-9]*)*", location):
        raise ValueError(f"{location!r} is not a location (e.g. europe-west4)")


@dataclass(frozen=True)
class Resource:
    """Something gcloud names: `gcloud GROUP… VERB NAME FLAGS…`."""

    group: tuple[str, ...]
    name: str
    flags: tuple[str, ...] = ()


def platform_steps(
    project: str, bucket: str, location: str, node_service_account: str | None = None
) -> list[Step]:
    """The one-time setup of a project for dyff on GKE and Cloud Run."""
    _check(project, bucket, location)
    repository = Resource(("artifacts", "repositories"), REPOSITORY, (f"--location={location}",))
    storage = Resource(("storage", "buckets"), f"gs://{bucket}")
    steps = [Step(("gcloud", "services", "enable", *SERVICES, f"--project={project}"))]
    for name in (CONTROLLER, SHIM, WORKLOAD, BUILDER):
        steps.append(_create(project, _account(project, name), name, f"--display-name={name}"))
    steps.append(
        _create(project, storage, storage.name, f"--location={location}",
                "--uniform-bucket-level-access")
    )  # fmt: skip
    steps.append(_create(project, repository, REPOSITORY, "--repository-format=docker"))
    everything = Resource(("projects",), project, ("--condition=None",))
    for name in (CONTROLLER, SHIM, WORKLOAD):
        steps.append(_binding(project, everything, _sa(project, name), "roles/datastore.user"))
        steps.append(_binding(project, storage, _sa(project, name), "roles/storage.objectAdmin"))
    for name in (CONTROLLER, SHIM):  # each signs URLs with its own key (signBlob)
        steps.append(_binding(project, _account(project, name), _sa(project, name), TOKEN_CREATOR))
    controller_ksa = _ksa(project, CONTROLLER_KSA)
    steps.append(_binding(project, _account(project, CONTROLLER), controller_ksa, WI_USER))
    writer = "roles/artifactregistry.writer"
    steps.append(_binding(project, repository, _sa(project, BUILDER), writer))
    if node_service_account:  # the nodes pull the images built from users' Bentos
        member = f"serviceAccount:{node_service_account}"
        steps.append(_binding(project, repository, member, "roles/artifactregistry.reader"))
    return steps


def account_steps(project: str, account: str) -> list[Step]:
    """One account's namespace may use the workload and builder identities."""
    from dyff.schema import NAME_PATTERN

    _check(project, "placeholder")
    if not re.fullmatch(NAME_PATTERN, account) or len(account) > 63:
        raise ValueError(f"account {account!r} is not a namespace name")
    return [
        _binding(project, _account(project, gsa), _ksa(project, f"{account}/{ksa}"), WI_USER)
        for gsa, ksa in ((WORKLOAD, WORKLOAD_KSA), (BUILDER, BUILDER_KSA))
    ]


TOKEN_CREATOR = "roles/iam.serviceAccountTokenCreator"
WI_USER = "roles/iam.workloadIdentityUser"


def _account(project: str, name: str) -> Resource:
    return Resource(("iam", "service-accounts"), email(name, project))


def _sa(project: str, name: str) -> str:
    return f"serviceAccount:{email(name, project)}"


def _ksa(project: str, namespaced: str) -> str:
    return f"serviceAccount:{project}.svc.id.goog[{namespaced}]"


def _create(project: str, resource: Resource, *create: str) -> Step:
    """Create it unless `describe` finds it."""
    p = f"--project={project}"
    return Step(
        ("gcloud", *resource.group, "create", *create, *resource.flags, p),
        unless=("gcloud", *resource.group, "describe", resource.name, *resource.flags, p),
    )


def _binding(project: str, resource: Resource, member: str, role: str) -> Step:
    """Grant `role` on `resource` to `member` (adding a binding that exists changes
    nothing)."""
    return Step(
        ("gcloud", *resource.group, "add-iam-policy-binding", resource.name, *resource.flags,
         f"--member={member}", f"--role={role}", f"--project={project}")
    )  # fmt: skip


def run(
    steps: Sequence[Step],
    apply: bool,
    echo: Callable[[str], None] = print,
    runner: Callable[[Sequence[str]], int] | None = None,
) -> int:
    """Print the steps (dry run) or run them; returns the first failing exit code, or 0."""
    call = runner or (lambda cmd: subprocess.run(list(cmd), check=False).returncode)
    if not apply:
        echo("# dry run: nothing runs; --apply runs these")
    for step in steps:
        echo(step.render())
        if not apply:
            continue
        if step.unless is not None and call(step.unless) == 0:
            continue  # it exists already
        if (code := call(step.command)) != 0:
            return code
    return 0
