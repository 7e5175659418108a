"""Executor: workloads as Kubernetes Jobs (`batch/v1`), one per object and generation.

What the Jobs look like is controller/executors/manifests.py; the API calls go through
controller/kube.py; the Pods' entry point is dyff/workloads/pod.py. This module starts,
observes and stops the Jobs.

Nothing is kept in memory: the Jobs are the state, so a restarted controller finds
its work where it left it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from controller.executors import WorkKey
from controller.executors.manifests import (
    JOB_NAME_LABEL,
    LABEL_GENERATION,
    LABEL_KIND,
    LABEL_NAME,
    MANAGED_BY,
    MANAGER,
    JobSettings,
    get_job,
    get_service_account,
    work_labels,
)
from controller.kube import ApiError, KubeApi, custom_object_path, job_path, selector
from controller.reconcilers.common import Workload, WorkState
from dyff.schema import Evaluation, Model, entity_type
from dyff.stores.records import RecordStore

__all__ = ["JobSettings", "KubernetesExecutor"]

log = logging.getLogger("dyff.controller.kubernetes")


class KubernetesExecutor:
    """Executor protocol over Jobs. Every method is blocking (the Kubernetes client is
    synchronous); reconcile passes run in threads."""

    runs_containers = True

    def __init__(self, api: KubeApi, records: RecordStore, settings: JobSettings) -> None:
        self.api = api
        self.records = records
        self.settings = settings
        self._accounts_ready: set[str] = set()
        self._lock = threading.Lock()
        # Objects that may have Jobs: those found at the first look, and those this
        # process started work for. Others have none, so `state` needs no API call for
        # them (the many objects waiting for an upload or a dependency). The controller
        # is the only one creating dyff Jobs (one replica, Recreate).
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
        return self._job_state(job)

    def start(self, key: WorkKey, workload: Workload, generation: int) -> None:
        kind, account, name = key
        entity = self.records.find(entity_type(kind), account, name)
        if entity is None:
            return  # its record is gone; the next pass stops everything for it
        model = None
        if isinstance(entity, Evaluation):
            ref = entity.spec.model
            model = self.records.find(Model, ref.account or account, ref.name)
            if model is None:
                raise RuntimeError(f"model {ref.name!r} of evaluation {name!r} is gone")
        self.ensure_service_account(account)
        with self._lock:
            if self._may_have_jobs is not None:
                self._may_have_jobs.add(key)  # before it exists: `state` will look for it
        owner = self.api.find(custom_object_path(kind, account, name))
        owner_uid = owner["metadata"]["uid"] if owner else None
        job = get_job(self.settings, entity, workload, generation, owner_uid=owner_uid, model=model)
        name = job["metadata"]["name"]
        try:
            self.api.create(job_path(account), job)
        except ApiError as exc:
            if exc.status != 409:
                raise
            existing = self.api.find(job_path(account, name))
            if existing is not None and existing["metadata"].get("deletionTimestamp"):
                # Same generation restarted while its old Job still terminates: next pass.
                raise RuntimeError(f"Job {name} is still terminating") from exc
            # Otherwise it is this very Job, started by an earlier pass: nothing to do.
        log.info("started %s for %s %s/%s (generation %d)", workload, *key, generation)

    def stop(self, key: WorkKey) -> None:
        _, account, _ = key
        for job in self._jobs(key):
            if job["metadata"].get("deletionTimestamp"):
                continue
            # Background: the Job goes now, its Pods after it (the sidecar server too).
            self.api.delete(job_path(account, job["metadata"]["name"]))

    def work_keys(self) -> list[WorkKey]:
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
        _, account, _ = key
        wanted = work_labels(key)
        listing = self.api.get(job_path(account), labelSelector=selector(wanted))
        # Filter here too: the selector is the API server's, the guarantee is ours.
        return [
            j
            for j in listing.get("items", [])
            if all((j["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

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

    def _termination_message(self, job: dict[str, Any]) -> str:
        """The failed container's own words (its termination message, or the tail of its
        log: terminationMessagePolicy FallbackToLogsOnError)."""
        meta = job["metadata"]
        try:
            pods = self.api.get(
                f"/api/v1/namespaces/{meta['namespace']}/pods",
                labelSelector=selector({JOB_NAME_LABEL: meta["name"]}),
            ).get("items", [])
        except ApiError:
            return ""
        found = ""
        for pod in pods:
            if (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) != meta["name"]:
                continue
            status = pod.get("status") or {}
            for cs in (status.get("containerStatuses") or []) + (
                status.get("initContainerStatuses") or []
            ):
                term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
                    "terminated"
                )
                if term and term.get("exitCode", 0) != 0:
                    words = (term.get("message") or "").strip() or term.get("reason") or ""
                    found = f"{cs.get('name')}: exit {term.get('exitCode')}: {words}"[:600]
        return found

    # ---- starting

    def ensure_service_account(self, account: str) -> None:
        """The workload ServiceAccount in the account's namespace, from the template
        (created, or its labels and annotations patched), once per process."""
        with self._lock:
            if account in self._accounts_ready:
                return
        import yaml

        name = self.settings.service_account
        template = None
        if self.settings.service_account_template is not None:
            template = yaml.safe_load(self.settings.service_account_template.read_text())
        account_manifest = get_service_account(template, name, account)
        meta = account_manifest["metadata"]
        path = f"/api/v1/namespaces/{account}/serviceaccounts"
        current = self.api.find(f"{path}/{name}")
        if current is None:
            try:
                self.api.create(path, account_manifest)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        else:
            have = current.get("metadata", {})
            want = {k: meta.get(k) or {} for k in ("labels", "annotations")}
            if any(any((have.get(k) or {}).get(x) != y for x, y in want[k].items()) for k in want):
                self.api.merge_patch(f"{path}/{name}", {"metadata": want})
        with self._lock:
            self._accounts_ready.add(account)


def _generation(job: dict[str, Any]) -> int:
    try:
        return int((job["metadata"].get("labels") or {}).get(LABEL_GENERATION, 0))
    except ValueError:
        return 0
