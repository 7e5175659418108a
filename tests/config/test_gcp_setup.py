"""hack/gcp-setup.sh (dyff/gcp.py): the Google Cloud side the overlays assume, made by
idempotent gcloud commands — a dry run by default, run with --apply. The script runs
here against a fake `gcloud` on PATH that records its calls."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from dyff import gcp

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "gcp-setup.sh"
ARGS = ["--project", "proj-123", "--bucket", "dyff-blobs", "--location", "europe-west4"]


def commands(steps: list[gcp.Step]) -> list[str]:
    return [" ".join(s.command) for s in steps]


def test_every_google_identity_the_overlays_name_is_created() -> None:
    """Each `NAME@PROJECT.iam.gserviceaccount.com` in config/ is a service account the
    setup creates (with PROJECT filled in)."""
    named = set()
    for path in (ROOT / "config").rglob("*.yaml"):
        named |= set(
            re.findall(r"([a-z][a-z0-9-]+)@PROJECT\.iam\.gserviceaccount\.com", path.read_text())
        )
    created = {
        s.command[4]
        for s in gcp.platform_steps("proj-123", "dyff-blobs", "europe-west4")
        if s.command[:4] == ("gcloud", "iam", "service-accounts", "create")
    }
    assert named and named <= created, named - created


@pytest.mark.parametrize(
    ("account", "role", "where"),
    [
        ("dyff-controller", "roles/datastore.user", "projects"),
        ("dyff-controller", "roles/storage.objectAdmin", "gs://dyff-blobs"),
        ("dyff-controller", "roles/iam.serviceAccountTokenCreator", "dyff-controller@"),
        ("dyff-shim", "roles/datastore.user", "projects"),
        ("dyff-shim", "roles/storage.objectAdmin", "gs://dyff-blobs"),
        ("dyff-shim", "roles/iam.serviceAccountTokenCreator", "dyff-shim@"),
        ("dyff-workload", "roles/datastore.user", "projects"),
        ("dyff-workload", "roles/storage.objectAdmin", "gs://dyff-blobs"),
        ("dyff-image-builder", "roles/artifactregistry.writer", "dyff-models"),
    ],
)
def test_each_identity_gets_the_roles_the_overlays_assume(
    account: str, role: str, where: str
) -> None:
    member = f"--member=serviceAccount:{account}@proj-123.iam.gserviceaccount.com"
    found = [
        c
        for c in commands(gcp.platform_steps("proj-123", "dyff-blobs", "europe-west4"))
        if member in c and f"--role={role}" in c and where in c
    ]
    assert len(found) == 1, (account, role)


def test_nothing_grants_the_builder_storage_or_the_model_servers_anything() -> None:
    steps = commands(gcp.platform_steps("proj-123", "dyff-blobs", "europe-west4", "n@x.com"))
    builder = [c for c in steps if "dyff-image-builder@proj-123" in c and "--member" in c]
    assert builder and all("artifactregistry.writer" in c for c in builder)
    assert not any("dyff-model-server" in c for c in steps)
    assert any("roles/artifactregistry.reader" in c and "n@x.com" in c for c in steps)


def test_the_controller_may_act_for_its_kubernetes_service_account_only() -> None:
    steps = commands(gcp.platform_steps("proj-123", "dyff-blobs", "europe-west4"))
    wi = [c for c in steps if "roles/iam.workloadIdentityUser" in c]
    assert wi == [
        "gcloud iam service-accounts add-iam-policy-binding "
        "dyff-controller@proj-123.iam.gserviceaccount.com "
        "--member=serviceAccount:proj-123.svc.id.goog[dyff-system/dyff-controller] "
        "--role=roles/iam.workloadIdentityUser --project=proj-123"
    ]


def test_an_account_gets_workload_identity_for_its_namespace_only() -> None:
    steps = commands(gcp.account_steps("proj-123", "acme"))
    assert len(steps) == 2
    assert all("svc.id.goog[acme/" in c and "workloadIdentityUser" in c for c in steps)
    assert {c.split()[4] for c in steps} == {
        "dyff-workload@proj-123.iam.gserviceaccount.com",
        "dyff-image-builder@proj-123.iam.gserviceaccount.com",
    }
    for bad in ("Acme", "a/b", "x" * 64):
        with pytest.raises(ValueError, match="namespace"):
            gcp.account_steps("proj-123", bad)
    with pytest.raises(ValueError, match="project"):
        gcp.account_steps("Not A Project", "acme")


def test_apply_creates_only_what_is_missing_and_stops_at_a_failure() -> None:
    calls: list[tuple[str, ...]] = []

    def runner(cmd: tuple[str, ...]) -> int:
        calls.append(tuple(cmd))
        if cmd[:5] == (
            "gcloud",
            "iam",
            "service-accounts",
            "describe",
            gcp.email("dyff-shim", "proj-123"),
        ):
            return 0  # exists already
        return 1 if "describe" in cmd else 0

    steps = gcp.platform_steps("proj-123", "dyff-blobs", "europe-west4")
    assert gcp.run(steps, apply=True, echo=lambda _: None, runner=runner) == 0
    created = [c[4] for c in calls if c[:4] == ("gcloud", "iam", "service-accounts", "create")]
    assert created == ["dyff-controller", "dyff-workload", "dyff-image-builder"]
    calls.clear()
    assert gcp.run(steps, apply=False, echo=lambda _: None, runner=runner) == 0
    assert calls == []  # a dry run runs nothing
    failing = gcp.run(steps, apply=True, echo=lambda _: None, runner=lambda cmd: 7)
    assert failing == 7


def _fake_gcloud(tmp_path: Path) -> tuple[dict[str, str], Path]:
    log = tmp_path / "gcloud.log"
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    # `describe` finds nothing (exit 1); everything else succeeds.
    fake.write_text(
        '#!/bin/sh\necho "$*" >> "$GCLOUD_LOG"\ncase "$*" in *describe*) exit 1;; esac\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "GCLOUD_LOG": str(log)}
    return env, log


def test_the_script_is_a_dry_run_unless_told_to_apply(tmp_path: Path) -> None:
    env, log = _fake_gcloud(tmp_path)
    dry = subprocess.run([str(SCRIPT), *ARGS], env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and "gcloud iam service-accounts create" in dry.stdout
    assert not log.exists()
    applied = subprocess.run(
        [str(SCRIPT), *ARGS, "--apply"], env=env, capture_output=True, text=True
    )
    assert applied.returncode == 0, applied.stderr
    ran = log.read_text().splitlines()
    assert sum(line.startswith("iam service-accounts create") for line in ran) == 4
    assert any("storage buckets create gs://dyff-blobs" in line for line in ran)
    account = subprocess.run(
        [str(SCRIPT), "account", "acme", "--project", "proj-123"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert account.returncode == 0 and "svc.id.goog[acme/dyff-workload]" in account.stdout
    bad = subprocess.run([str(SCRIPT), "--project", "X", "--bucket", "b", "--location", "l"],
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "project" in bad.stderr and "Traceback" not in bad.stderr
