"""Where work lives outside the stores, for `dyff admin fsck`: the work folders of one
machine (`DATA_DIR/work/<kind>/<account>/<name>`) and the Jobs of a cluster.

The CLI finds these through the entry-point group `dyff.workplaces` (the dyff library
does not import controller/); each entry is a factory `(settings) -> Workplace | None`,
None where there is no such place to look.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.executors import WorkKey
from controller.executors.guard import kill_leftovers
from dyff.schema import RESOURCE_TYPES

if TYPE_CHECKING:
    from controller.executors.kubernetes import KubernetesExecutor

KIND_OF_FOLDER = {k.kind_name.lower(): k.kind_name for k in RESOURCE_TYPES}


class WorkFolders:
    """The work folders of `dyff up` (controller/executors/local.py lays them out)."""

    what = "work folder"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir

    def work_keys(self) -> list[WorkKey]:
        keys = []
        for folder in sorted(self.work_dir.glob("*/*/*")):
            kind = KIND_OF_FOLDER.get(folder.parent.parent.name)
            if kind is not None and folder.is_dir():
                keys.append((kind, folder.parent.name, folder.name))
        return keys

    def stop(self, key: WorkKey) -> None:
        kind, account, name = key
        folder = self.work_dir / kind.lower() / account / name
        kill_leftovers(folder)  # a workload of a gone entity may still run there
        shutil.rmtree(folder, ignore_errors=True)


def work_folders(settings: Any) -> WorkFolders | None:
    work = Path(settings.data_dir) / "work"
    return WorkFolders(work) if work.is_dir() else None


def cluster_jobs(settings: Any) -> KubernetesExecutor | None:
    """The cluster's dyff Jobs, where the controller runs them (DYFF_EXECUTOR=kubernetes)
    and this process can reach the API (in-cluster, or a kubeconfig)."""
    if os.environ.get("DYFF_EXECUTOR") != "kubernetes":
        return None
    from controller.executors.kubernetes import JobSettings
    from controller.kube import KubeApi
    from dyff.stores import open_records

    return KubernetesExecutor(
        KubeApi.from_environment(), open_records(settings.records), JobSettings.from_env()
    )
