"""Argo CD integration: the Lua health checks (run in Lua 5.1, as Argo CD's gopher-lua),
their argocd-cm embedding, the Application examples and the samples' sync waves."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from dyff import argocdgen, crdgen
from dyff.lifecycle import lifecycle
from dyff.schema import RESOURCE_TYPES
from tests import crd_validation
from tests.config import argocd_health as ah

pytest.importorskip("lupa", reason="lupa (a Lua runtime) is not installed")

ROOT = ah.ROOT
CRDS = {t.kind_name: crdgen.crd(t) for t in RESOURCE_TYPES}


def health_cases() -> list[Any]:
    cases = []
    for kind in ah.KINDS:
        folder = ah.script_path(kind).parent
        spec = yaml.safe_load((folder / "health_test.yaml").read_text())
        for case in spec["tests"]:
            cases.append(
                pytest.param(
                    kind,
                    folder / case["inputPath"],
                    case["healthStatus"],
                    id=f"{kind}-{Path(case['inputPath']).stem}",
                )
            )
    return cases


def load(path: Path) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load(path.read_text())
    return obj


def script(kind: str) -> str:
    return ah.script_path(kind).read_text()


@pytest.mark.parametrize(("kind", "path", "expected"), health_cases())
def test_health_check(kind: str, path: Path, expected: dict[str, str]) -> None:
    obj = load(path)
    assert obj["kind"] == kind
    assert ah.health(script(kind), obj) == expected


@pytest.mark.parametrize(("kind", "path", "expected"), health_cases())
def test_testdata_is_what_the_api_server_accepts(
    kind: str, path: Path, expected: dict[str, str]
) -> None:
    assert crd_validation.validate(CRDS[kind], load(path)) == []


@pytest.mark.parametrize("kind", ah.KINDS)
def test_every_testdata_file_is_a_case_and_every_status_is_covered(kind: str) -> None:
    folder = ah.script_path(kind).parent
    spec = yaml.safe_load((folder / "health_test.yaml").read_text())
    listed = {case["inputPath"] for case in spec["tests"]}
    on_disk = {f"testdata/{p.name}" for p in (folder / "testdata").glob("*.yaml")}
    assert listed == on_disk
    statuses = {case["healthStatus"]["status"] for case in spec["tests"]}
    assert statuses == {"Healthy", "Progressing", "Degraded"}
    messages = [case["healthStatus"]["message"] for case in spec["tests"]]
    assert "Waiting for the controller" in messages or any("Pending" in m for m in messages)
    assert any("observe generation" in m for m in messages), "observedGeneration is covered"


@pytest.mark.parametrize("kind", ah.KINDS)
def test_health_follows_the_object(kind: str) -> None:
    """The same object moves between statuses as its status changes."""
    obj: dict[str, Any] = {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "demo", "generation": 4},
        "status": {
            "phase": "Ready",
            "observedGeneration": 4,
            "conditions": [
                {"type": "Other", "status": "False", "reason": "X", "message": "not me"},
                {"type": "Ready", "status": "True", "reason": "Done", "message": ""},
            ],
        },
    }
    assert ah.health(script(kind), obj) == {"status": "Healthy", "message": "Ready"}
    flipped = copy.deepcopy(obj)
    flipped["status"]["conditions"][1]["status"] = "Unknown"
    assert ah.health(script(kind), flipped)["status"] == "Progressing"
    failed = copy.deepcopy(obj)
    failed["status"]["phase"] = "Failed"
    failed["status"]["message"] = "boom"
    assert ah.health(script(kind), failed) == {"status": "Degraded", "message": "boom"}
    stale = copy.deepcopy(obj)
    stale["metadata"]["generation"] = 5
    assert ah.health(script(kind), stale) == {
        "status": "Progressing",
        "message": "Waiting for the controller to observe generation 5",
    }
    empty_status = copy.deepcopy(obj)
    empty_status["status"] = {}
    assert ah.health(script(kind), empty_status)["status"] == "Progressing"


def test_the_runner_rejects_a_script_that_returns_no_health() -> None:
    with pytest.raises(ValueError, match="not a table"):
        ah.health("return nil", {})
    with pytest.raises(ValueError, match="status 'Fine'"):
        ah.health('return {status = "Fine"}', {})
    with pytest.raises(Exception, match="nil"):
        ah.health("return obj.status.phase", {})


@pytest.mark.parametrize(
    "touch",
    [
        'string.format("%d", 1)',
        '("x"):upper()',
        "math.floor(1.5)",
        'io.write("x")',
        'os.getenv("HOME")',
        "coroutine.create(print)",
    ],
)
def test_the_runner_fails_a_script_that_touches_a_library_argocd_does_not_open(
    touch: str,
) -> None:
    with pytest.raises(Exception, match=r"a nil value|attempt to index a string"):
        ah.health(f'local x = {touch}\nreturn {{status = "Healthy"}}', {})


def test_the_runner_leaves_the_base_library() -> None:
    script = 'return {status = "Healthy", message = tostring(#obj.items) .. " " .. type(obj)}'
    assert ah.health(script, {"items": [1, 2]}) == {"status": "Healthy", "message": "2 table"}


def test_crds_are_never_pruned_or_deleted_by_argocd() -> None:
    """Deleting a CRD deletes every object of its kind: Argo CD may create and update
    the CRDs, never prune or delete them (the Application's finalizer and `prune: true`
    included)."""
    for kind in RESOURCE_TYPES:
        path = ah.ROOT / "crds" / f"dyff.io_{kind.plural}.yaml"
        crd = yaml.safe_load(path.read_text())
        options = crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
        assert set(options.split(",")) >= {"Prune=false", "Delete=false"}, path


@pytest.mark.parametrize("rel", sorted(argocdgen.files()), ids=str)
def test_generated_files_match_what_make_argocd_writes(rel: Path) -> None:
    path = ah.ARGOCD / rel
    assert path.exists(), f"{path} missing: run `make argocd`"
    assert path.read_text() == argocdgen.files()[rel], f"{path} drifted: run `make argocd`"


def test_the_generator_checks_and_writes(tmp_path: Path) -> None:
    assert argocdgen.main(["--check", "--out", str(ah.ARGOCD)]) == 0
    assert argocdgen.main(["--check", "--out", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []
    assert argocdgen.main(["--out", str(tmp_path)]) == 0
    assert argocdgen.main(["--check", "--out", str(tmp_path)]) == 0
    assert (tmp_path / ah.CM_PATCH.name).read_text() == ah.CM_PATCH.read_text()


@pytest.mark.parametrize("kind", ah.KINDS)
def test_health_follows_the_lifecycle(kind: str) -> None:
    """Every phase of the kind, at the current generation: Degraded exactly in its
    failure phase; otherwise Healthy with Ready True and Progressing without."""
    life = lifecycle(kind)
    for phase in life.phases:
        for ready in ("True", "False"):
            obj = {
                "kind": kind,
                "metadata": {"name": "x", "namespace": "demo", "generation": 2},
                "status": {
                    "phase": phase.value,
                    "observedGeneration": 2,
                    "conditions": [
                        {"type": "Ready", "status": ready, "reason": "R", "message": "m"}
                    ],
                },
            }
            expected = (
                "Degraded"
                if phase == life.failed
                else "Healthy"
                if ready == "True"
                else "Progressing"
            )
            assert ah.health(script(kind), obj)["status"] == expected, (phase, ready)


@pytest.mark.parametrize(("kind", "path", "expected"), health_cases())
def test_testdata_phases_are_the_kinds(kind: str, path: Path, expected: dict[str, str]) -> None:
    phase = (load(path).get("status") or {}).get("phase")
    assert phase is None or phase in lifecycle(kind).values, f"{path.name}: phase {phase!r}"


def test_argocd_cm_patch_embeds_the_lua_scripts() -> None:
    cm = yaml.safe_load(ah.CM_PATCH.read_text())
    assert (cm["apiVersion"], cm["kind"], cm["metadata"]) == (
        "v1",
        "ConfigMap",
        {"name": "argocd-cm", "namespace": "argocd"},
    )
    assert set(cm["data"]) == {ah.cm_key(k) for k in ah.KINDS}
    for kind in ah.KINDS:
        assert cm["data"][ah.cm_key(kind)] == script(kind), kind


def test_health_scripts_exist_for_exactly_the_dyff_kinds() -> None:
    assert set(ah.KINDS) == {t.kind_name for t in RESOURCE_TYPES}
    on_disk = {p.parent.name for p in (ah.HEALTH / ah.GROUP).glob("*/health.lua")}
    assert on_disk == set(ah.KINDS)


# ------------------------------------------------------------------ Applications


def application(name: str) -> dict[str, Any]:
    docs = yaml.safe_load_all((ah.ARGOCD / name).read_text())
    app: dict[str, Any] = next(d for d in docs if d["kind"] == "Application")
    return app


@pytest.mark.parametrize("name", ["application.yaml", "application-gitops.yaml"])
def test_application_shape(name: str) -> None:
    app = application(name)
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    assert app["metadata"]["namespace"] == "argocd"
    spec = app["spec"]
    assert set(spec) >= {"project", "source", "destination", "syncPolicy"}
    assert {"repoURL", "path", "targetRevision"} <= set(spec["source"])
    assert spec["destination"]["server"] == "https://kubernetes.default.svc"
    assert spec["destination"]["namespace"]
    assert "ServerSideApply=true" in spec["syncPolicy"]["syncOptions"]


def test_control_plane_application_points_at_the_gke_overlay() -> None:
    app = application("application.yaml")
    path = app["spec"]["source"]["path"]
    assert path == "config/overlays/gke"
    assert (ROOT / path / "kustomization.yaml").exists()
    assert app["spec"]["destination"]["namespace"] == "dyff-system"
    assert "CreateNamespace=true" in app["spec"]["syncPolicy"]["syncOptions"]


@pytest.mark.parametrize("account", ["demo", "acme", "team-7"])
def test_an_accounts_gitops_folder_reaches_only_its_own_namespace(account: str) -> None:
    """`dyff admin gitops ACCOUNT`: the Application syncs gitops/ACCOUNT in the account's
    own AppProject, which allows dyff's kinds in the namespace ACCOUNT and nothing else —
    no other namespace, no cluster-scoped object, no other repository."""
    repo = "https://git.example/org/evals.git"
    docs = list(yaml.safe_load_all(argocdgen.account_gitops(account, repo)))
    project = next(d for d in docs if d["kind"] == "AppProject")
    app = next(d for d in docs if d["kind"] == "Application")
    assert len(docs) == 2
    spec = project["spec"]
    assert spec["destinations"] == [
        {"server": "https://kubernetes.default.svc", "namespace": account}
    ]
    assert spec["sourceRepos"] == [repo]
    assert spec["clusterResourceWhitelist"] == []
    assert {(r["group"], r["kind"]) for r in spec["namespaceResourceWhitelist"]} == {
        ("dyff.io", k.kind_name) for k in RESOURCE_TYPES
    }
    assert "*" not in yaml.safe_dump(spec).replace("'*.yaml'", "")
    assert app["spec"]["project"] == project["metadata"]["name"] != "default"
    assert app["spec"]["destination"] in spec["destinations"]
    assert app["spec"]["source"]["path"] == f"gitops/{account}"
    assert app["spec"]["source"]["repoURL"] == repo
    assert app["spec"]["source"]["directory"]["recurse"] is True
    options = app["spec"]["syncPolicy"]["syncOptions"]
    assert "SkipDryRunOnMissingResource=true" in options
    assert "CreateNamespace=true" not in options  # dyff makes the namespace; nobody else


@pytest.mark.parametrize("account", ["Acme", "a/b", "x" * 64, "", "-a"])
def test_gitops_refuses_an_account_that_is_no_namespace(account: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        argocdgen.account_gitops(account, "https://git.example/r.git")


# ------------------------------------------------------------------ sync waves

WAVES = {"Model": "0", "Dataset": "0", "Evaluation": "1"}


@pytest.mark.parametrize(
    "path", sorted((ROOT / "config" / "samples").glob("*.yaml")), ids=lambda p: p.name
)
def test_samples_carry_their_sync_wave(path: Path) -> None:
    obj = load(path)
    annotations = obj["metadata"].get("annotations", {})
    assert annotations.get("argocd.argoproj.io/sync-wave") == WAVES[obj["kind"]]


def test_dyff_admin_gitops_prints_the_accounts_project_and_application() -> None:
    import subprocess
    import sys

    args = [sys.executable, "-m", "dyff.cli", "admin", "gitops", "acme", "--repo", "https://g/r"]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == argocdgen.account_gitops("acme", "https://g/r")
    bad = subprocess.run([*args[:5], "Acme!", *args[6:]], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a namespace name" in bad.stderr
    assert "Traceback" not in bad.stderr
