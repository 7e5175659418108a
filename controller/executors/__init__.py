"""Where workloads run: local processes or Kubernetes Jobs, behind one small interface."""

from __future__ import annotations

from typing import Protocol

from controller.reconcilers.common import Workload, WorkState

WorkKey = tuple[str, str, str]  # (kind, account, name)


class Executor(Protocol):
    """Starts, observes and stops one workload per object."""

    @property
    def runs_containers(self) -> bool:
        """Whether image-form models can run here."""
        ...

    def state(self, key: WorkKey) -> WorkState: ...

    def start(self, key: WorkKey, workload: Workload, generation: int) -> None: ...

    def stop(self, key: WorkKey) -> None: ...

    def work_keys(self) -> list[WorkKey]:
        """Objects this executor holds work for (running or finished)."""
        ...

    def close(self) -> None: ...
