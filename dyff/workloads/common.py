"""What every workload shares: its config file, the stores, and how it reports.

A workload is `python -m dyff.workloads.<name> --config FILE`: the same entry
point runs in a Kubernetes Job's container and as a local subprocess. It reads
and writes only through the record and blob stores named in its config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from dyff.errors import DyffError
from dyff.schema import Schema
from dyff.stores import BlobStore, RecordStore, open_blobs, open_records

log = logging.getLogger("dyff.workloads")


class WorkloadConfig(Schema):
    """The config file a workload is started with."""

    records_url: str = Field(description="Record store URL.")
    blobs_url: str = Field(description="Blob store URL.")
    account: str = Field(description="Account owning the entity.")
    name: str = Field(description="Name of the Model, Dataset or Evaluation.")
    scratch_dir: str | None = Field(default=None, description="Local scratch space.")
    shard_index: int | None = Field(
        default=None, description="For Indexed Jobs: this Pod's index (JOB_COMPLETION_INDEX)."
    )
    shard_count: int | None = Field(default=None, description="For Indexed Jobs: Pod count.")

    def stores(self) -> tuple[RecordStore, BlobStore]:
        return open_records(self.records_url), open_blobs(self.blobs_url)


class WorkloadFailed(DyffError):
    """The input is bad (a user error): the entity fails with this reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def run_main(run: Callable[[WorkloadConfig], None], argv: list[str] | None = None) -> int:
    """Parse `--config FILE`, run, and exit 0 (done), 2 (bad input, reported) or 1 (crash)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = WorkloadConfig.model_validate(json.loads(args.config.read_text()))
    try:
        run(config)
    except WorkloadFailed as exc:
        log.error("failed: %s: %s", exc.reason, exc.message)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run a workload module, e.g. python -m dyff.workloads.evaluate --config FILE")
