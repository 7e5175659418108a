"""Render config/ with kustomize and check what comes out.

Rendering: the real kustomize, as `kustomize build DIR` when a kustomize binary is on
PATH, else `kubectl kustomize DIR` (kubectl embeds kustomize; this machine image's
google-cloud-cli ships kubectl 1.32 with kustomize v5.5). Nothing here re-implements
kustomize.

Schemas: `kubernetes-validate` ships the Kubernetes OpenAPI schemas as JSON Schema per
minor version; `strict` schemas refuse unknown fields, so a misspelt field fails.

The checkers return lists of problems (empty = fine) so that the tests can show that
they do reject bad input.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"

# The oldest Kubernetes minor dyff supports and the newest the schemas know.
OLDEST_KUBERNETES = "1.29"

Obj = dict[str, Any]


def renderer() -> list[str] | None:
    """The command that renders a kustomization directory, or None."""
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    if exe := shutil.which("kubectl"):
        return [exe, "kustomize"]
    return None


def renderer_missing() -> str | None:
    if renderer() is None:
        return (
            "neither kustomize nor kubectl (which embeds kustomize) is on PATH: "
            "config/ cannot be rendered"
        )
    return None


@functools.cache
def _render(path: str) -> tuple[Obj, ...]:
    cmd = renderer()
    assert cmd is not None, renderer_missing()
    proc = subprocess.run(
        [*cmd, path], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} {path} failed:\n{proc.stderr}")
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def render(path: Path) -> list[Obj]:
    """Every object `kustomize build path` prints (a fresh copy each call)."""
    return copy.deepcopy(list(_render(str(path))))


def load_yaml_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# ------------------------------------------------------------------ schemas


def schema_problems(obj: Obj, version: str) -> list[str]:
    """Problems of a built-in object against Kubernetes `version`'s strict schema."""
    import kubernetes_validate as kv

    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        return [f"{obj['kind']}/{obj['metadata'].get('name')}: {where}: {e.message}"]
    except kv.SchemaNotFoundError as e:
        return [str(e.message)]
    return []


def definition_problems(value: Any, definition: str, version: str) -> list[str]:
    """Problems of a value against one strict schema file, e.g. `container-v1.json`."""
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    schema_dir = f"kubernetes-json-schema/v{full_version(version)}-local-strict"
    schema = utils.schema_contents(f"{schema_dir}/{definition}", version)
    defs = utils.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(defs) @ registry
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [
        f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in validator.iter_errors(value)
    ]


def full_version(minor: str) -> str:
    from kubernetes_validate import utils

    return next(v for v in reversed(utils.all_versions()) if utils.major_minor(v) <= minor)


def latest_kubernetes() -> str:
    from kubernetes_validate import utils

    return str(utils.major_minor(utils.latest_version()))


# ------------------------------------------------------------------ RBAC

FORBIDDEN_RESOURCES = {
    "secrets",
    "roles",
    "rolebindings",
    "clusterroles",
    "clusterrolebindings",
    "serviceaccounts/token",
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "nodes",
    "nodes/proxy",
    "certificatesigningrequests",
    "mutatingwebhookconfigurations",
    "validatingwebhookconfigurations",
}
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "deletecollection"}


def rbac_problems(role: Obj) -> list[str]:
    """Least-privilege violations of a (Cluster)Role."""
    problems = []
    if "aggregationRule" in role:
        problems.append("aggregationRule: permissions must be listed, not aggregated")
    for i, rule in enumerate(role.get("rules", [])):
        if rule.get("nonResourceURLs"):
            problems.append(f"rule {i}: nonResourceURLs")
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            if "*" in rule.get(field, []):
                problems.append(f"rule {i}: wildcard in {field}")
        for resource in rule.get("resources", []):
            if resource in FORBIDDEN_RESOURCES or resource.endswith("/*"):
                problems.append(f"rule {i}: access to {resource}")
        for verb in rule.get("verbs", []):
            if verb in FORBIDDEN_VERBS - {"*"}:
                problems.append(f"rule {i}: verb {verb}")
    return problems


def permissions(role: Obj) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination the role grants."""
    return {
        (group, resource, verb)
        for rule in role.get("rules", [])
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


# ------------------------------------------------------------------ pods


def pod_security_problems(pod_spec: Obj) -> list[str]:
    """Violations of the `restricted` Pod Security Standard (what dyff-system enforces),
    plus a read-only root filesystem and resource limits for the controller's taste."""
    problems = []
    pod_sc = pod_spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            problems.append(f"{field} is set")
    for vol in pod_spec.get("volumes", []):
        if "hostPath" in vol:
            problems.append(f"volume {vol['name']} is a hostPath")
    for c in pod_spec.get("initContainers", []) + pod_spec.get("containers", []):
        name = c["name"]
        sc = c.get("securityContext", {})
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities do not drop ALL")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{name}: adds capabilities")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        if "limits" not in c.get("resources", {}) or "requests" not in c.get("resources", {}):
            problems.append(f"{name}: no resource requests and limits")
        for port in c.get("ports", []):
            if "hostPort" in port:
                problems.append(f"{name}: hostPort")
    return problems


def image_problems(image: str) -> list[str]:
    """An image must carry a tag or digest, and not `latest`."""
    last = image.rsplit("/", 1)[-1]
    if "@sha256:" in image:
        return []
    if ":" not in last:
        return [f"{image}: no tag (means latest)"]
    if last.endswith(":latest"):
        return [f"{image}: tag latest"]
    return []


def containers(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(workload object, container) for every pod template in `objs`."""
    out = []
    for o in objs:
        spec = o.get("spec", {}).get("template", {}).get("spec")
        if spec:
            out += [(o, c) for c in spec.get("initContainers", []) + spec["containers"]]
    return out


def probe_port(container: Obj, port: int | str) -> int:
    """A probe's port as a number, resolving a named containerPort."""
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"{container['name']}: probe names unknown port {port}"
    return int(named[port])


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out
