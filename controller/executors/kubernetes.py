"""Executor: workloads as Kubernetes Jobs (`batch/v1`), one per object and generation.

What the Jobs look like is controller/executors/manifests.py; the API calls go through
controller/kube.py; the Pods' entry point is dyff/workloads/pod.py. This module starts,
observes and stops the Jobs, and around an isolated model's evaluation (a user's own
code) its model server's Pod, Service and NetworkPolicy, and the build of a user's Bento
into an image.

Nothing is kept in memory: the Jobs are the state, so a restarted controller finds
its work where it left it. An isolated evaluation goes in steps, each taken by `state`
when it sees the one before done: its Job waits suspended while the Bento's image is
built (the Job's annotation names the build); once the image is known the server is
started and the Job resumed. A Pod that cannot start (an image that cannot be pulled, a
crash loop, a server never ready) fails the work at once instead of at the Job's deadline.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from controller.executors import WorkKey
from controller.executors.manifests import (
    ANNOTATION_IMAGE_BUILD,
    ANNOTATION_IMAGE_DIGEST,
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_LAST_USED,
    ANNOTATION_MODEL_IMAGE,
    BUILDER,
    FETCHER,
    JOB_NAME_LABEL,
    LABEL_GENERATION,
    LABEL_KIND,
    LABEL_MODEL_ACCOUNT,
    LABEL_MODEL_NAME,
    LABEL_NAME,
    LABEL_ROLE,
    LABEL_USES_WARM,
    LABEL_WARM,
    MANAGED_BY,
    MANAGER,
    MODEL_SERVER,
    ROLE_SERVER,
    WORKLOAD_IDENTITY_ANNOTATION,
    JobSettings,
    build_job_name,
    get_build_job,
    get_build_network_policy,
    get_job,
    get_model_network_policy,
    get_model_server,
    get_model_server_pod,
    get_model_server_service_account,
    get_model_service,
    get_service_account,
    get_warm_deployment,
    get_warm_network_policy,
    get_warm_server_container,
    get_warm_service,
    is_isolated,
    model_port,
    role_labels,
    server_name,
    warm_server_name,
    work_labels,
)
from controller.kube import (
    CORE_RESOURCES,
    ApiError,
    KubeApi,
    custom_object_path,
    job_path,
    object_path,
    resource_path,
    selector,
)
from controller.reconcilers.common import Workload, WorkState
from dyff import layout
from dyff.models import validate_image_reference
from dyff.schema import Evaluation, Model, entity_type
from dyff.stores.records import RecordStore

__all__ = ["JobSettings", "KubernetesExecutor", "pod_failure"]

log = logging.getLogger("dyff.controller.kubernetes")

# Container waiting reasons that do not go away by waiting.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerConfigError",
        "CrashLoopBackOff",
        "RunContainerError",
        "InvalidImageName",
    }
)
# The named reason a failed container's work gets, by container.
FAILURE_REASONS = {
    MODEL_SERVER: "ModelServerFailed",
    BUILDER: "ImageBuildFailed",
    FETCHER: "ImageBuildFailed",
}
BUILD_UNAVAILABLE = (
    "ModelBuildUnavailable: the model runs its own Bento service, which is built into an "
    "image, and DYFF_IMAGE_REPOSITORY (where built images go) is not set"
)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# The builder fetches the Bento with this; a Job retried after it expires fails.
BENTO_URL_TTL = datetime.timedelta(hours=1)
MESSAGE_LIMIT = 400

UrlSigner = Callable[[str, datetime.timedelta], "str | None"]


class _Failed(Exception):
    """A step of an isolated evaluation cannot succeed; its message, "Reason: detail",
    becomes the work's failure reason and message."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class KubernetesExecutor:
    """Executor protocol over Jobs. Every method is blocking (the Kubernetes client is
    synchronous); reconcile passes run in threads.

    `sign_url(blob key, ttl)` gives the builder Pod its Bento: a URL that reads one blob
    for a while, so that Pod needs no storage credential (default: signed by the blob
    store of `settings.blobs_url`). `clock` is for tests."""

    runs_containers = True
    what = "Job"  # what `dyff admin fsck` calls its work (dyff.fsck.Workplace)

    def __init__(
        self,
        api: KubeApi,
        records: RecordStore,
        settings: JobSettings,
        *,
        sign_url: UrlSigner | None = None,
        clock: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        self.api = api
        self.records = records
        self.settings = settings
        self.sign_url = sign_url
        self.clock = clock
        self._accounts_ready: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        # Objects that may have Jobs: those found at the first look, and those this
        # process started work for. Others have none, so `state` needs no API call for
        # them (the many objects waiting for an upload or a dependency). The controller
        # is the only one creating dyff Jobs (the replica holding the Lease).
        self._may_have_jobs: set[WorkKey] | None = None

    # ---- the protocol

    def state(self, key: WorkKey) -> WorkState:
        with self._lock:
            known = self._may_have_jobs
        if known is None:
            found = set(self.work_keys())
            with self._lock:
                if self._may_have_jobs is None:
                    self._may_have_jobs = found
                known = self._may_have_jobs
        if key not in known:
            return WorkState()
        jobs = [j for j in self._jobs(key) if not j["metadata"].get("deletionTimestamp")]
        if not jobs:
            return WorkState()
        job = max(jobs, key=_generation)
        work = self._job_state(job)
        if work.phase != "running":
            if _isolated(job) and self._server_pods(key, work.generation):
                self._remove_server(job)  # nothing left to serve
            return work
        pods = self.api.select(resource_path("pods", key[1]), work_labels(key, work.generation))
        warm = _warm_of(job)
        if warm is not None:
            pods += self.api.select(resource_path("pods", key[1]), {LABEL_WARM: warm})
        try:
            failure = pod_failure(pods, self.clock(), self.settings.model_start_timeout_s)
            if failure is not None:
                raise _Failed(failure)
            if warm is not None and job["spec"].get("suspend"):
                self._serve(key, job)  # its image may be built now
            elif _isolated(job) and not any(_is_server(p) for p in pods):
                self._serve(key, job)
        except _Failed as exc:
            self._abandon(job)
            if warm is not None:
                self._remove_warm(key[1], warm)  # a broken server is not kept for others
            meta = job["metadata"]
            log.warning("%s/%s failed: %s", meta["namespace"], meta["name"], exc)
            reason, _, detail = str(exc).partition(": ")  # every _Failed is "Reason: detail"
            return WorkState("failed", work.generation, detail, reason)
        return work

    def start(self, key: WorkKey, workload: Workload, generation: int) -> None:
        kind, account, name = key
        entity = self.records.find(entity_type(kind), account, name)
        if entity is None:
            return  # its record is gone; the next pass stops everything for it
        model = None
        built_image = image_build = warm = None
        if isinstance(entity, Evaluation):
            model = self._model_of(entity)
            if workload == "evaluate" and self.settings.warm_idle_s > 0:
                warm = warm_server_name(self.settings, model, entity)
            if workload == "evaluate" and is_isolated(model):
                self._ensure_account(
                    get_model_server_service_account(
                        self.settings.model_server_service_account, account
                    ),
                    # An identity added by hand to the servers' account is taken away.
                    remove_annotations=(WORKLOAD_IDENTITY_ANNOTATION,),
                )
                if model.spec.source.image is None:
                    built_image, image_build = self._image_of(model)
        self.ensure_service_account(account)
        with self._lock:
            if self._may_have_jobs is not None:
                self._may_have_jobs.add(key)  # before it exists: `state` will look for it
        owner = self.api.find(custom_object_path(kind, account, name))
        owner_uid = owner["metadata"]["uid"] if owner else None
        job = get_job(
            self.settings,
            entity,
            workload,
            generation,
            owner_uid=owner_uid,
            model=model,
            built_image=built_image,
            image_build=image_build,
            warm=warm,
        )
        if warm is not None and not job["spec"].get("suspend"):
            # Before the Job: its clients find the server up (or starting), and the
            # sweep sees it used now.
            assert isinstance(entity, Evaluation) and model is not None
            image = (job["metadata"].get("annotations") or {}).get(ANNOTATION_MODEL_IMAGE)
            self._ensure_warm(entity, model, warm, image)
        created = self._create(job)
        if created is not None and _isolated(created) and not created["spec"].get("suspend"):
            self._serve(key, created)  # the image is known: serve it now
        log.info("started %s for %s %s/%s (generation %d)", workload, *key, generation)

    def stop(self, key: WorkKey) -> None:
        for job in self._jobs(key):
            if job["metadata"].get("deletionTimestamp"):
                continue
            self._abandon(job)
        if key[0] == "Model" and self.settings.warm_idle_s > 0:
            # A model's warm servers go with it, in every account that used it.
            labels = {MANAGED_BY: MANAGER, LABEL_MODEL_ACCOUNT: key[1], LABEL_MODEL_NAME: key[2]}
            for deployment in self.api.select(_all_deployments(), labels):
                meta = deployment["metadata"]
                self._remove_warm(meta["namespace"], meta["name"])

    def work_keys(self) -> list[WorkKey]:
        """From the Jobs: a model server, its Service and NetworkPolicy are owned by
        their Job (garbage-collected with it), builds by their Model."""
        listing = self.api.get(job_path(None), labelSelector=selector({MANAGED_BY: MANAGER}))
        keys = set()
        for job in listing.get("items", []):
            labels = job["metadata"].get("labels") or {}
            if labels.get(MANAGED_BY) == MANAGER and LABEL_KIND in labels and LABEL_NAME in labels:
                keys.add((labels[LABEL_KIND], job["metadata"]["namespace"], labels[LABEL_NAME]))
        return sorted(keys)

    def close(self) -> None:
        pass  # the Jobs outlive the controller on purpose

    # ---- observing

    def _jobs(self, key: WorkKey) -> list[dict[str, Any]]:
        return self.api.select(job_path(key[1]), work_labels(key))

    def _server_pods(self, key: WorkKey, generation: int) -> list[dict[str, Any]]:
        return self.api.select(
            resource_path("pods", key[1]), role_labels(key, generation, ROLE_SERVER)
        )

    def _job_state(self, job: dict[str, Any]) -> WorkState:
        generation = _generation(job)
        status = job.get("status") or {}
        true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
        if "Complete" in true or "SuccessCriteriaMet" in true:
            return WorkState("succeeded", generation)
        failed = true.get("Failed") or true.get("FailureTarget")
        if failed is None:
            return WorkState("running", generation)
        if failed.get("reason") == "PodFailurePolicy":
            # Our only FailJob rule is exit code 2: the workload reported a user error
            # in the record, as a local workload exiting 2 does.
            return WorkState("succeeded", generation)
        message = failed.get("message") or failed.get("reason") or "Job failed"
        detail = self._termination_message(job)
        if detail:
            # The container's own words (a traceback) are for operators, not the status.
            meta = job.get("metadata") or {}
            log.warning("Job %s/%s failed: %s; %s", meta.get("namespace"), meta.get("name"),
                        message, detail)  # fmt: skip
        return WorkState("failed", generation, f"{message}; see the controller's log")

    def _job_pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        meta = job["metadata"]
        try:
            return self.api.select(
                resource_path("pods", meta["namespace"]), {JOB_NAME_LABEL: meta["name"]}
            )
        except ApiError:
            return []

    def _termination_message(self, job: dict[str, Any]) -> str:
        """The failed container's own words (its termination message, or the tail of its
        log: terminationMessagePolicy FallbackToLogsOnError)."""
        found = ""
        for cs in _container_statuses(self._job_pods(job)):
            term = _terminated(cs)
            if term and term.get("exitCode", 0) != 0:
                words = (term.get("message") or "").strip() or term.get("reason") or ""
                found = f"{cs.get('name')}: exit {term.get('exitCode')}: {words}"[:600]
        return found

    # ---- the isolated model server

    def _model_of(self, evaluation: Evaluation) -> Model:
        ref = evaluation.spec.model
        model = self.records.find(Model, ref.account or evaluation.account, ref.name)
        if model is None:
            raise RuntimeError(f"model {ref.name!r} of evaluation {evaluation.name!r} is gone")
        return model

    def _serve(self, key: WorkKey, job: dict[str, Any]) -> None:
        """Start the model server of an isolated evaluation whose image is known (or
        becomes known now: its build is done), and let the Job's clients start."""
        meta = job["metadata"]
        annotations = meta.get("annotations") or {}
        image = annotations.get(ANNOTATION_MODEL_IMAGE)
        if image is None:
            image = self._built_image(annotations.get(ANNOTATION_IMAGE_BUILD, ""))
            if image is None:
                return  # still building
        _, account, name = key
        evaluation = self.records.find(Evaluation, account, name)
        if evaluation is None:
            return  # its record is gone; the next pass stops everything for it
        try:
            model = self._model_of(evaluation)
        except RuntimeError as exc:
            raise _Failed(f"ModelServerFailed: {exc}") from None
        generation = _generation(job)
        warm = _warm_of(job)
        if warm is not None:
            self._ensure_warm(evaluation, model, warm, image)
            self._resume(job, image)
            return
        # A user's server gets the serving knobs only: no workload env, no store URLs.
        container = get_model_server(self.settings, model, evaluation, {}, image=image)
        port = model_port(self.settings, model)
        job_name, uid = meta["name"], meta["uid"]
        # The policy first: the server is never reachable, nor reaches out, without it.
        for manifest in (
            get_model_network_policy(key, generation, job_name, uid, port),
            get_model_service(key, generation, job_name, uid, port),
            get_model_server_pod(self.settings, key, generation, job_name, uid, container),
        ):
            self._create(manifest)
        self._resume(job, image)
        log.info("serving %s for %s %s/%s", image, *key)

    def _resume(self, job: dict[str, Any], image: str) -> None:
        """Let a Job waiting for its server's image start, noting the image."""
        if job["spec"].get("suspend"):
            meta = job["metadata"]
            self.api.merge_patch(
                job_path(meta["namespace"], meta["name"]),
                {
                    "metadata": {"annotations": {ANNOTATION_MODEL_IMAGE: image}},
                    "spec": {"suspend": False},
                },
            )

    # ---- warm model servers (manifests.get_warm_deployment)

    def _ensure_warm(
        self, evaluation: Evaluation, model: Model, name: str, image: str | None
    ) -> None:
        """The warm server `name` up (made, or scaled back to one) and marked used now."""
        namespace = evaluation.account
        now = self.clock().isoformat()
        port = model_port(self.settings, model)
        container = get_warm_server_container(self.settings, model, evaluation, image)
        # The policy first: the server is never reachable, nor reaches out, without it.
        self._create(get_warm_network_policy(name, namespace, model, port))
        self._create(get_warm_service(name, namespace, model, port))
        deployment = get_warm_deployment(self.settings, name, namespace, model, container, now)
        if self._create(deployment) is None:
            self.api.merge_patch(
                resource_path("deployments", namespace, name),
                {"metadata": {"annotations": {ANNOTATION_LAST_USED: now}}, "spec": {"replicas": 1}},
            )
        log.info("warm server %s/%s for model %s/%s", namespace, name, model.account, model.name)

    def _remove_warm(self, namespace: str, name: str) -> None:
        for plural in ("deployments", "services", "networkpolicies"):
            self.api.delete(resource_path(plural, namespace, name))

    def sweep_warm(self) -> list[str]:
        """Scale to zero each warm server no Job has used for `warm_idle_s`: none running
        that uses it, and the last start (its annotation) or the last finish of one that
        did (the Jobs' completion) that long ago. Returns `namespace/name` of each."""
        idle = datetime.timedelta(seconds=self.settings.warm_idle_s)
        now = self.clock()
        scaled = []
        jobs: dict[str, list[dict[str, Any]]] = {}  # by namespace: one listing each
        for deployment in self.api.select(_all_deployments(), {MANAGED_BY: MANAGER}):
            meta, spec = deployment["metadata"], deployment.get("spec") or {}
            name = (meta.get("labels") or {}).get(LABEL_WARM)
            if name is None or not spec.get("replicas"):
                continue
            last = _parse_time((meta.get("annotations") or {}).get(ANNOTATION_LAST_USED))
            namespace = meta["namespace"]
            if namespace not in jobs:
                jobs[namespace] = self.api.select(job_path(namespace), {MANAGED_BY: MANAGER})
            busy = False
            for job in jobs[namespace]:
                if _warm_of(job) != name:
                    continue
                if self._job_state(job).phase == "running":
                    busy = True
                    break
                finished = _finished_at(job)
                if finished is not None and (last is None or finished > last):
                    last = finished
            if busy or (last is not None and now - last < idle):
                continue
            self.api.merge_patch(
                resource_path("deployments", meta["namespace"], meta["name"]),
                {"spec": {"replicas": 0}},
            )
            scaled.append(f"{meta['namespace']}/{meta['name']}")
            log.info("warm server %s/%s idle: scaled to zero", meta["namespace"], meta["name"])
        return scaled

    def _remove_server(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        name = server_name(meta["name"])
        for plural in ("pods", "services", "networkpolicies"):
            self.api.delete(resource_path(plural, meta["namespace"], name))

    def _abandon(self, job: dict[str, Any]) -> None:
        """Delete the Job (Background: its Pods after it, the sidecar server too) and an
        isolated server's Pod, Service and NetworkPolicy."""
        meta = job["metadata"]
        self.api.delete(job_path(meta["namespace"], meta["name"]))
        if _isolated(job):
            self._remove_server(job)

    # ---- building a user's Bento

    def _image_of(self, model: Model) -> tuple[str | None, str]:
        """(the model's built image if its build is done, `namespace/name` of its build),
        starting the build if there is none. Without DYFF_IMAGE_REPOSITORY nothing is
        built: `state` fails the evaluation, naming the setting."""
        if not model.status.digest:
            raise RuntimeError(f"model {model.name!r} has no packaged Bento")
        name = build_job_name(model.status.digest)
        ref = f"{model.account}/{name}"
        if not self.settings.image_repository:
            return None, ref
        build = self.api.find(job_path(model.account, name))
        if build is None:
            self._start_build(model)
            return None, ref
        if build["metadata"].get("deletionTimestamp"):
            raise RuntimeError(f"build {name} is still terminating")
        return _pushed_image(build), ref

    def _start_build(self, model: Model) -> None:
        import yaml

        template = None
        if self.settings.builder_service_account_template is not None:
            template = yaml.safe_load(self.settings.builder_service_account_template.read_text())
        self._ensure_account(
            get_service_account(template, self.settings.builder_service_account, model.account)
        )
        owner = self.api.find(custom_object_path("Model", model.account, model.name))
        owner_uid = owner["metadata"]["uid"] if owner else None
        key = layout.bento_key(model.account, str(model.status.digest))
        url = (self.sign_url or self._default_signer())(key, BENTO_URL_TTL)
        if not url:
            raise RuntimeError(f"{self.settings.blobs_url} cannot sign a URL for the builder")
        self._create(get_build_network_policy(model, owner_uid))
        self._create(get_build_job(self.settings, model, url, owner_uid))
        log.info("building the image of model %s/%s", model.account, model.name)

    def _built_image(self, ref: str) -> str | None:
        """The pinned image a build pushed; None while it runs; _Failed when it cannot
        succeed (a failed build is deleted, so the next evaluation builds again)."""
        if not self.settings.image_repository:
            raise _Failed(BUILD_UNAVAILABLE)
        namespace, _, name = ref.partition("/")
        build = self.api.find(job_path(namespace, name)) if name else None
        if build is None or build["metadata"].get("deletionTimestamp"):
            raise _Failed(f"ImageBuildFailed: the image build {name!r} is gone")
        pushed = _pushed_image(build)
        if pushed is not None:
            return pushed
        state = self._job_state(build)
        if state.phase == "failed":
            self.api.delete(job_path(namespace, name))
            raise _Failed(f"ImageBuildFailed: {state.message}")
        pods = self._job_pods(build)
        if state.phase == "running":
            failure = pod_failure(pods, self.clock(), self.settings.model_start_timeout_s)
            if failure is not None:
                self.api.delete(job_path(namespace, name))
                raise _Failed(failure)
            return None
        digest = _pushed_digest(pods)
        if digest is None:
            self.api.delete(job_path(namespace, name))
            raise _Failed(f"ImageBuildFailed: build {name} reported no image digest")
        self.api.merge_patch(
            job_path(namespace, name),
            {"metadata": {"annotations": {ANNOTATION_IMAGE_DIGEST: digest}}},
        )
        build["metadata"].setdefault("annotations", {})[ANNOTATION_IMAGE_DIGEST] = digest
        return _pushed_image(build)

    def _default_signer(self) -> UrlSigner:
        from dyff.stores import open_blobs

        blobs = open_blobs(self.settings.blobs_url)
        return lambda key, ttl: signed_download_url(blobs, key, ttl)

    # ---- starting

    def _create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create; None where it already exists (an earlier pass made it). One that is
        still being deleted: RuntimeError, the next pass tries again."""
        path = object_path(manifest)
        try:
            return self.api.create(path.rsplit("/", 1)[0], manifest)
        except ApiError as exc:
            if exc.status == 404:  # its namespace is gone (and with it its accounts)
                namespace = manifest["metadata"].get("namespace")
                with self._lock:
                    self._accounts_ready = {a for a in self._accounts_ready if a[0] != namespace}
            if exc.status != 409:
                raise
        existing = self.api.find(path)
        if existing is not None and existing["metadata"].get("deletionTimestamp"):
            # Same generation restarted while its old object still terminates: next pass.
            raise RuntimeError(
                f"{manifest['kind']} {manifest['metadata']['name']} is still terminating"
            )
        return None

    def ensure_service_account(self, account: str) -> None:
        """The workload ServiceAccount in the account's namespace, from the template
        (created, or its labels and annotations patched), once per process."""
        import yaml

        template = None
        if self.settings.service_account_template is not None:
            template = yaml.safe_load(self.settings.service_account_template.read_text())
        self._ensure_account(get_service_account(template, self.settings.service_account, account))

    def _ensure_account(
        self, manifest: dict[str, Any], remove_annotations: Iterable[str] = ()
    ) -> None:
        """A ServiceAccount as `manifest` says (created, or its labels and annotations
        patched, `remove_annotations` taken away), once per process."""
        meta = manifest["metadata"]
        done = (meta["namespace"], meta["name"])
        with self._lock:
            if done in self._accounts_ready:
                return
        path = object_path(manifest)
        current = self.api.find(path)
        if current is None:
            self._create(manifest)
        else:
            have = current.get("metadata", {})
            want: dict[str, dict[str, Any]] = {
                k: dict(meta.get(k) or {}) for k in ("labels", "annotations")
            }
            want["annotations"].update(dict.fromkeys(remove_annotations))  # None: removed
            if any(any((have.get(k) or {}).get(x) != y for x, y in want[k].items()) for k in want):
                self.api.merge_patch(path, {"metadata": want})
        with self._lock:
            self._accounts_ready.add(done)


# ---------------------------------------------------------------- pure helpers


def _generation(job: dict[str, Any]) -> int:
    try:
        return int((job["metadata"].get("labels") or {}).get(LABEL_GENERATION, 0))
    except ValueError:
        return 0


def _isolated(job: Mapping[str, Any]) -> bool:
    """An evaluation Job whose model server runs in a Pod of its own, for it alone."""
    annotations = job["metadata"].get("annotations") or {}
    isolated = ANNOTATION_MODEL_IMAGE in annotations or ANNOTATION_IMAGE_BUILD in annotations
    return isolated and _warm_of(job) is None


def _warm_of(job: Mapping[str, Any]) -> str | None:
    """The warm server an evaluation Job's clients use, if any."""
    template = ((job.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return (template.get("labels") or {}).get(LABEL_USES_WARM)


def _all_deployments() -> str:
    return f"{CORE_RESOURCES['deployments']}/deployments"


def _finished_at(job: Mapping[str, Any]) -> datetime.datetime | None:
    """When a Job finished (its Complete or Failed condition), if it has."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return _parse_time(condition.get("lastTransitionTime"))
    return None


def _is_server(pod: Mapping[str, Any]) -> bool:
    return (pod["metadata"].get("labels") or {}).get(LABEL_ROLE) == ROLE_SERVER


def _container_statuses(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        cs
        for pod in pods
        for cs in ((pod.get("status") or {}).get("initContainerStatuses") or [])
        + ((pod.get("status") or {}).get("containerStatuses") or [])
    ]


def _terminated(cs: Mapping[str, Any]) -> dict[str, Any] | None:
    state = (cs.get("state") or {}).get("terminated")
    return state or (cs.get("lastState") or {}).get("terminated")


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _failed(container: str, words: str) -> str:
    reason = FAILURE_REASONS.get(container, "WorkloadPodFailed")
    return f"{reason}: container {container}: {words}"[:MESSAGE_LIMIT]


def pod_failure(
    pods: Iterable[Mapping[str, Any]], now: datetime.datetime, start_timeout_s: float
) -> str | None:
    """Why the work of these Pods cannot go on, or None: a container stuck waiting for
    a reason that waiting does not cure (the kubelet's own words), a model server not
    ready `start_timeout_s` after its Pod started, a model server Pod that failed."""
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        if status.get("phase") == "Failed" and _is_server(pod):
            words = status.get("message") or status.get("reason") or "its Pod failed"
            return _failed(MODEL_SERVER, f"Failed: {words}")
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        statuses = _container_statuses([pod])
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                words = f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
                return _failed(cs.get("name", "?"), words)
        started = _parse_time(status.get("startTime"))
        if started is None or (now - started).total_seconds() <= start_timeout_s:
            continue
        for cs in statuses:
            if cs.get("name") == MODEL_SERVER and not (cs.get("ready") or cs.get("started")):
                return _failed(
                    MODEL_SERVER, f"not ready {start_timeout_s:g} s after its Pod started"
                )
    return None


def _pushed_digest(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The digest kaniko wrote to its termination message (`--digest-file`)."""
    for cs in _container_statuses(pods):
        term = _terminated(cs)
        if cs.get("name") == BUILDER and term and term.get("exitCode") == 0:
            words = (term.get("message") or "").strip()
            if DIGEST.fullmatch(words):
                return words
    return None


def _pushed_image(build: Mapping[str, Any]) -> str | None:
    """`<image name>@sha256:…` of a finished build: the name the controller gave it,
    the digest it pushed; checked as every served image reference is."""
    annotations = build["metadata"].get("annotations") or {}
    digest, name = annotations.get(ANNOTATION_IMAGE_DIGEST), annotations.get(ANNOTATION_IMAGE_NAME)
    if not digest or not name or not DIGEST.fullmatch(digest):
        return None
    return str(validate_image_reference(f"{name}@{digest}"))


def signed_download_url(blobs: Any, key: str, ttl: datetime.timedelta) -> str | None:
    """A V4-signed GET of one blob of a GCS store (None for other stores): the builder
    Pod reads its Bento with it and holds no credential. Against the emulator, which
    checks no signatures, its plain media URL."""
    from dyff.stores.gcs import GcsBlobStore

    if not isinstance(blobs, GcsBlobStore):
        return None
    name = f"{blobs.prefix}/{key}" if blobs.prefix else key
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        bucket, obj = quote(blobs.bucket.name, safe=""), quote(name, safe="")
        return f"{emulator.rstrip('/')}/download/storage/v1/b/{bucket}/o/{obj}?alt=media"
    import google.auth
    import google.auth.transport.requests
    from google.auth.credentials import Signing

    credentials, _ = google.auth.default()
    extra: dict[str, Any] = {}
    if not isinstance(credentials, Signing):
        # Metadata-server credentials (GKE) sign through the IAM API.
        credentials.refresh(google.auth.transport.requests.Request())
        extra = {
            "service_account_email": getattr(credentials, "service_account_email", None),
            "access_token": credentials.token,
        }
    url: str = blobs.bucket.blob(name).generate_signed_url(
        version="v4", expiration=ttl, method="GET", credentials=credentials, **extra
    )
    return url
