"""Every manifest under config/ renders, is schema-valid and says what dyff needs.

The kustomizations are rendered by the real kustomize (see manifests.py); built-in
objects are checked against Kubernetes' own OpenAPI schemas (strict: unknown fields
fail) for the oldest supported and the newest known Kubernetes minor.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dyff.config import parse_blobs_url, parse_records_url
from tests.config import manifests as m
from tests.config.manifests import CONFIG, ROOT, Obj

KUSTOMIZATIONS = {
    "base": CONFIG / "base",
    "kind": CONFIG / "overlays" / "kind",
    "gke": CONFIG / "overlays" / "gke",
}
OVERLAYS = ["kind", "gke"]
NAMESPACE = "dyff-system"
CONTROLLER = "dyff-controller"
CONTROLLER_COMMAND = ["python", "-m", "controller", "run"]
HEALTH_PORT = 8080
WORKLOAD_IDENTITY = "iam.gke.io/gcp-service-account"

# Every kind config/ may render, by apiVersion.
KNOWN_KINDS = {
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}

# The controller's permissions, exactly. A new permission is a deliberate edit here too.
_CRUD = ("get", "list", "watch", "create", "update", "patch", "delete")
EXPECTED_PERMISSIONS = (
    {("dyff.io", r, v) for r in ("models", "datasets", "evaluations") for v in _CRUD}
    | {
        ("dyff.io", f"{r}/status", v)
        for r in ("models", "datasets", "evaluations")
        for v in ("get", "update", "patch")
    }
    | {("dyff.io", f"{r}/finalizers", "update") for r in ("models", "datasets", "evaluations")}
    | {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")}
    | {("batch", "jobs", v) for v in ("get", "list", "watch", "create", "patch", "delete")}
    | {("", "pods", v) for v in ("get", "list", "watch", "create", "delete")}
    | {("", "pods/log", "get")}
    | {("", "services", v) for v in ("get", "create", "delete")}
    | {("networking.k8s.io", "networkpolicies", v) for v in ("get", "create", "delete")}
    | {("apps", "deployments", v) for v in ("get", "list", "create", "patch", "delete")}
    | {("", "namespaces", v) for v in ("get", "list", "watch", "create")}
    | {("", "serviceaccounts", v) for v in ("get", "create", "patch")}
    | {(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")}
)


def rendered(name: str) -> list[Obj]:
    """The objects of a kustomization (a fresh copy); skips when nothing can render it."""
    if reason := m.renderer_missing():
        pytest.skip(reason)
    return m.render(KUSTOMIZATIONS[name])


def controller_deployment(objs: list[Obj]) -> Obj:
    return m.one(objs, "Deployment", CONTROLLER)


def controller_container(objs: list[Obj]) -> Obj:
    spec = controller_deployment(objs)["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    return dict(spec["containers"][0])


def controller_env(objs: list[Obj]) -> dict[str, str]:
    """The controller's environment: its ConfigMap (envFrom) plus literal env."""
    container = controller_container(objs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        cm = m.one(objs, "ConfigMap", source["configMapRef"]["name"])
        env.update(cm["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "<valueFrom>")
    return env


def workload_template(
    objs: list[Obj], config_map: str = "dyff-workload-template"
) -> tuple[str, Obj]:
    """(path in the controller's filesystem, parsed template) of the workload SA (or
    another template mounted from `config_map`)."""
    container = controller_container(objs)
    spec = controller_deployment(objs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        cm_ref = volumes[mount["name"]].get("configMap")
        if cm_ref and cm_ref["name"].startswith(config_map):
            cm = m.one(objs, "ConfigMap", cm_ref["name"])
            (key, text), *rest = cm["data"].items()
            assert not rest, "the template ConfigMap holds one file"
            return f"{mount['mountPath']}/{key}", yaml.safe_load(text)
    raise AssertionError(f"no {config_map} ConfigMap is mounted in the controller")


def strings(value: Any) -> list[str]:
    """Every string inside a YAML value."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def image_tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


# ---------------------------------------------------------------- crds/


def test_crds_kustomization_lists_every_generated_crd() -> None:
    listed = yaml.safe_load((ROOT / "crds" / "kustomization.yaml").read_text())["resources"]
    generated = sorted(p.name for p in (ROOT / "crds").glob("dyff.io_*.yaml"))
    assert generated, "no generated CRDs in crds/"
    assert sorted(listed) == generated, "crds/kustomization.yaml must list exactly crds/dyff.io_*"


# ---------------------------------------------------------------- every render


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renders_only_known_kinds_with_names_and_namespaces(name: str) -> None:
    objs = rendered(name)
    for o in objs:
        key = (o.get("apiVersion"), o.get("kind"))
        assert key in KNOWN_KINDS, f"{name}: unexpected {key}"
        meta = o["metadata"]
        assert meta.get("name"), f"{name}: {key} without a name"
        if o["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"{name}: cluster-scoped {o['kind']} with namespace"
        else:
            assert meta.get("namespace") == NAMESPACE, f"{name}: {o['kind']} {meta['name']}"
        assert meta.get("labels", {}).get("app.kubernetes.io/part-of") == "dyff"
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), f"{name}: duplicate objects"


@pytest.mark.parametrize("version", [m.OLDEST_KUBERNETES, "latest"])
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_rendered_object_is_schema_valid(name: str, version: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    version = m.latest_kubernetes() if version == "latest" else version
    problems = [p for o in rendered(name) for p in m.schema_problems(o, version)]
    assert not problems, "\n".join(problems)


def test_the_schema_check_rejects_a_misspelt_and_a_missing_field() -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    deployment = controller_deployment(rendered("base"))
    version = m.latest_kubernetes()
    assert m.schema_problems(deployment, version) == []
    typo = rendered("base")
    container = controller_deployment(typo)["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesytem"] = True
    assert "readOnlyRootFilesytem" in " ".join(
        m.schema_problems(controller_deployment(typo), version)
    )
    del container["securityContext"]["readOnlyRootFilesytem"]
    del container["name"]
    assert "'name' is a required property" in " ".join(
        m.schema_problems(controller_deployment(typo), version)
    )


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_generated_crds_are_included_unchanged(name: str) -> None:
    objs = rendered(name)
    for path in sorted((ROOT / "crds").glob("dyff.io_*.yaml")):
        source = yaml.safe_load(path.read_text())
        crd = m.one(objs, "CustomResourceDefinition", source["metadata"]["name"])
        assert crd["spec"] == source["spec"], f"{name}: {path.name} changed by kustomize"
    assert {c["spec"]["names"]["kind"] for c in m.find(objs, "CustomResourceDefinition")} == {
        "Model",
        "Dataset",
        "Evaluation",
    }


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_namespace_enforces_restricted_pod_security(name: str) -> None:
    ns = m.one(rendered(name), "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_pod_meets_the_restricted_profile(name: str) -> None:
    problems = [
        f"{o['metadata']['name']}: {p}"
        for o in m.find(rendered(name), "Deployment")
        for p in m.pod_security_problems(o["spec"]["template"]["spec"])
    ]
    assert not problems, "\n".join(problems)


def test_the_pod_security_check_rejects_an_unhardened_pod() -> None:
    spec = {"containers": [{"name": "c", "image": "x:1", "securityContext": {"runAsUser": 0}}]}
    problems = " ".join(m.pod_security_problems(spec))
    for expected in (
        "runAsNonRoot",
        "runAsUser 0",
        "allowPrivilegeEscalation",
        "drop ALL",
        "seccompProfile",
        "resource requests and limits",
    ):
        assert expected in problems


@pytest.mark.parametrize("name", OVERLAYS)
def test_images_are_tagged_and_never_latest(name: str) -> None:
    objs = rendered(name)
    images = [c["image"] for _, c in m.containers(objs)]
    images.append(controller_env(objs)["DYFF_RUNTIME_IMAGE"])
    problems = [p for image in images for p in m.image_problems(image)]
    assert not problems, problems
    assert m.image_problems("ghcr.io/dyff/dyff-controller") != []
    assert m.image_problems("localhost:5000/dyff-controller:latest") != []


# ---------------------------------------------------------------- the controller


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_controller_deployment_shape(name: str) -> None:
    objs = rendered(name)
    deployment = controller_deployment(objs)
    spec = deployment["spec"]
    # Two replicas: the Lease (controller/leader.py) lets one reconcile at a time.
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    selector = spec["selector"]["matchLabels"]
    labels = spec["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items(), "the selector must match the pod labels"

    pod = spec["template"]["spec"]
    account = m.one(objs, "ServiceAccount", pod["serviceAccountName"])
    assert account["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert pod.get("automountServiceAccountToken", True), "the controller needs its token"

    container = controller_container(objs)
    assert container["command"] == CONTROLLER_COMMAND
    assert container.get("args") is None
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert m.probe_port(container, probe["port"]) == HEALTH_PORT
    startup = container["startupProbe"]["httpGet"]
    assert (startup["path"], m.probe_port(container, startup["port"])) == ("/healthz", 8080)
    assert "readinessProbe" not in container, "an operator serves no traffic"

    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True or pod["securityContext"]["runAsNonRoot"] is True
    writable = {v["mountPath"] for v in container["volumeMounts"] if not v.get("readOnly")}
    assert writable == {"/tmp"}, "with a read-only root, only /tmp is writable"
    for var in ("HOME", "DYFF_DATA_DIR"):
        assert controller_env(objs)[var].startswith("/tmp"), f"{var} must be writable"

    for ref in container.get("envFrom", []):
        m.one(objs, "ConfigMap", ref["configMapRef"]["name"])
    for volume in pod["volumes"]:
        if "configMap" in volume:
            m.one(objs, "ConfigMap", volume["configMap"]["name"])


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_controller_environment(name: str) -> None:
    objs = rendered(name)
    env = controller_env(objs)
    assert env["DYFF_EXECUTOR"] == "kubernetes"
    parse_records_url(env["DYFF_RECORDS_URL"])
    parse_blobs_url(env["DYFF_BLOBS_URL"])
    assert "PORT" not in env
    runtime = env["DYFF_RUNTIME_IMAGE"]
    assert re.search(r"(^|/)dyff-runtime:", runtime), runtime
    controller_image = controller_container(objs)["image"]
    assert image_tag(runtime) == image_tag(controller_image), "released together, same tag"
    namespace = next(v for v in controller_container(objs)["env"] if v["name"] == "DYFF_NAMESPACE")
    assert namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_workload_service_account_template(name: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    objs = rendered(name)
    env = controller_env(objs)
    path, template = workload_template(objs)
    assert env["DYFF_WORKLOAD_SERVICE_ACCOUNT_TEMPLATE"] == path
    assert template["kind"] == "ServiceAccount"
    assert template["metadata"]["name"] == env["DYFF_WORKLOAD_SERVICE_ACCOUNT"] == "dyff-workload"
    assert "namespace" not in template["metadata"], "the controller sets the account namespace"
    assert template["automountServiceAccountToken"] is False, "workloads need no API token"
    assert m.schema_problems(template, m.latest_kubernetes()) == []
    # Nothing grants it anything.
    for binding in m.find(objs, "ClusterRoleBinding"):
        assert all(s["name"] != "dyff-workload" for s in binding["subjects"])


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_builder_service_account_template(name: str) -> None:
    """Image builders run users' Dockerfiles: their account has no token, no API
    permission, and at most a push-only identity, never the workloads' storage one."""
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    objs = rendered(name)
    env = controller_env(objs)
    path, template = workload_template(objs, "dyff-builder-template")
    assert env["DYFF_BUILDER_SERVICE_ACCOUNT_TEMPLATE"] == path
    assert template["metadata"]["name"] == "dyff-image-builder"
    assert template["automountServiceAccountToken"] is False
    assert m.schema_problems(template, m.latest_kubernetes()) == []
    identity = (template["metadata"].get("annotations") or {}).get(WORKLOAD_IDENTITY)
    _, workload = workload_template(objs)
    assert identity is None or identity != workload["metadata"].get("annotations", {}).get(
        WORKLOAD_IDENTITY
    )
    for binding in m.find(objs, "ClusterRoleBinding"):
        assert all(s["name"] != "dyff-image-builder" for s in binding["subjects"])
    assert float(env["DYFF_MODEL_START_TIMEOUT_S"]) > 0


# ---------------------------------------------------------------- RBAC


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rbac_binds_the_controller_account_to_its_role(name: str) -> None:
    objs = rendered(name)
    (binding,) = m.find(objs, "ClusterRoleBinding")
    role = m.one(objs, "ClusterRole", binding["roleRef"]["name"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = controller_deployment(objs)["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_cluster_role_is_least_privilege(name: str) -> None:
    (role,) = m.find(rendered(name), "ClusterRole")
    assert m.rbac_problems(role) == []
    granted = m.permissions(role)
    assert granted == EXPECTED_PERMISSIONS, (
        f"more: {sorted(granted - EXPECTED_PERMISSIONS)}; "
        f"missing: {sorted(EXPECTED_PERMISSIONS - granted)}"
    )
    assert not any(r == "secrets" for _, r, _ in granted)


def test_the_rbac_check_rejects_wildcards_and_secrets() -> None:
    role = {
        "rules": [
            {"apiGroups": ["*"], "resources": ["jobs"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
            {"apiGroups": ["dyff.io"], "resources": ["*"], "verbs": ["get"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["*"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["bind"]},
            {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        ]
    }
    problems = m.rbac_problems(role)
    assert len(problems) == 7, problems
    assert any("secrets" in p for p in problems)
    assert any("verb bind" in p for p in problems)


# ---------------------------------------------------------------- overlays


def test_base_uses_the_published_controller_image() -> None:
    image = controller_container(rendered("base"))["image"]
    assert image.startswith("ghcr.io/dyff/dyff-controller:")


def test_kind_overlay_uses_local_images_and_in_cluster_emulators() -> None:
    objs = rendered("kind")
    container = controller_container(objs)
    assert container["image"] == "dyff-controller:dev"
    assert container["imagePullPolicy"] == "IfNotPresent"
    env = controller_env(objs)
    assert env["DYFF_RUNTIME_IMAGE"] == "dyff-runtime:dev"
    assert parse_records_url(env["DYFF_RECORDS_URL"])[0] == "datastore"
    assert parse_blobs_url(env["DYFF_BLOBS_URL"])[0] == "gs"
    # Each emulator host is a Service of this render, on the port it serves.
    hosts = {
        "DATASTORE_EMULATOR_HOST": env["DATASTORE_EMULATOR_HOST"],
        "STORAGE_EMULATOR_HOST": urlsplit(env["STORAGE_EMULATOR_HOST"]).netloc,
    }
    for var, hostport in hosts.items():
        host, port = hostport.rsplit(":", 1)
        service_name, namespace = host.split(".")[:2]
        assert namespace == NAMESPACE, var
        service = m.one(objs, "Service", service_name)
        assert int(port) in [p["port"] for p in service["spec"]["ports"]], var
        backend = m.one(objs, "Deployment", service_name)
        pod_labels = backend["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), var
    # The GCS emulator creates the bucket of DYFF_BLOBS_URL.
    gcs = m.one(objs, "Deployment", "dyff-gcs")["spec"]["template"]["spec"]["containers"][0]
    bucket = parse_blobs_url(env["DYFF_BLOBS_URL"])[1]
    assert f"--default-bucket={bucket}" in gcs["args"]
    for _, c in m.containers(objs):
        assert c.get("imagePullPolicy") == "IfNotPresent", c["name"]


def test_kind_up_builds_and_loads_every_local_image() -> None:
    script = (ROOT / "hack" / "kind-up.sh").read_text()
    objs = rendered("kind")
    local = {c["image"] for _, c in m.containers(objs) if c["image"].endswith(":dev")}
    local.add(controller_env(objs)["DYFF_RUNTIME_IMAGE"])
    assert local == {"dyff-controller:dev", "dyff-runtime:dev", "dyff-gcs-emulator:dev"}
    for image in local:
        assert re.search(rf"docker build\b.*-t {re.escape(image)}\b", script), image
    assert "kind load docker-image" in script
    assert "kubectl apply -k config/overlays/kind" in script
    assert "rollout status" in script


def test_gke_overlay_workload_identity_and_production_stores() -> None:
    objs = rendered("gke")
    gsa = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]@PROJECT\.iam\.gserviceaccount\.com$")
    account = m.one(objs, "ServiceAccount", CONTROLLER)
    annotation = account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert gsa.match(annotation), annotation
    _, template = workload_template(objs)
    assert gsa.match(template["metadata"]["annotations"]["iam.gke.io/gcp-service-account"])
    _, builder = workload_template(objs, "dyff-builder-template")
    pusher = builder["metadata"]["annotations"][WORKLOAD_IDENTITY]
    assert gsa.match(pusher) and pusher.startswith("dyff-image-builder@")
    repository = controller_env(objs)["DYFF_IMAGE_REPOSITORY"]
    assert re.fullmatch(r"LOCATION-docker\.pkg\.dev/PROJECT/[a-z][-a-z0-9]*", repository)
    env = controller_env(objs)
    assert env["DYFF_RECORDS_URL"] == "datastore://PROJECT"
    assert env["DYFF_BLOBS_URL"] == "gs://BUCKET/dyff"
    assert not {k for k in env if k.endswith("_EMULATOR_HOST")}
    assert env["DYFF_RUNTIME_IMAGE"].startswith("ghcr.io/dyff/dyff-runtime:")
    pod = controller_deployment(objs)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"iam.gke.io/gke-metadata-server-enabled": "true"}
    # The documented placeholders, and no others, are left to edit.
    values = [s for o in objs if o["kind"] != "CustomResourceDefinition" for s in strings(o)]
    placeholders = {
        word
        for value in values
        if "://" in value or "@" in value
        for word in re.findall(r"\b[A-Z][A-Z_]{3,}\b", value)
    }
    assert placeholders == {"PROJECT", "BUCKET"}


# ---------------------------------------------------------------- Cloud Run


def cloudrun() -> Obj:
    (service,) = m.load_yaml_docs(CONFIG / "cloudrun" / "service.yaml")
    return service


def test_cloud_run_service_shape() -> None:
    service = cloudrun()
    assert service["apiVersion"] == "serving.knative.dev/v1"
    assert service["kind"] == "Service"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", service["metadata"]["name"])
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    low = int(annotations["autoscaling.knative.dev/minScale"])
    assert 0 <= low <= int(annotations["autoscaling.knative.dev/maxScale"])
    assert int(annotations["autoscaling.knative.dev/maxScale"]) >= 1
    spec = template["spec"]
    assert isinstance(spec["containerConcurrency"], int) and spec["containerConcurrency"] > 0
    assert spec["serviceAccountName"].endswith(".iam.gserviceaccount.com")
    (container,) = spec["containers"]
    (port,) = container["ports"]
    assert port["name"] in ("http1", "h2c")
    for probe in ("startupProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz", probe
        assert http.get("port", port["containerPort"]) == port["containerPort"], probe
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "PORT" not in env, "Cloud Run sets PORT itself"
    assert parse_records_url(env["DYFF_RECORDS_URL"])[0] == "datastore"
    assert parse_blobs_url(env["DYFF_BLOBS_URL"])[0] == "gs"
    assert urlsplit(env["DYFF_PUBLIC_URL"]).scheme == "https"
    assert set(container["resources"]) == {"limits"}, "Cloud Run takes limits only"
    assert m.image_problems(container["image"]) == []


def test_cloud_run_container_is_a_valid_kubernetes_container() -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    (container,) = cloudrun()["spec"]["template"]["spec"]["containers"]
    problems = m.definition_problems(container, "container-v1.json", m.latest_kubernetes())
    assert problems == []
    broken = {**container, "livenessProbe": {"httpGet": {"path": "/healthz", "prot": 8080}}}
    assert m.definition_problems(broken, "container-v1.json", m.latest_kubernetes())


def test_cloud_run_and_gke_use_the_same_store_urls() -> None:
    (container,) = cloudrun()["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    gke = controller_env(rendered("gke"))
    assert env["DYFF_RECORDS_URL"] == gke["DYFF_RECORDS_URL"]
    assert env["DYFF_BLOBS_URL"] == gke["DYFF_BLOBS_URL"]


# ---------------------------------------------------------------- Dockerfiles


def _pyproject_torch_pin() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"(torch==[^"]+)"', text)
    assert match, "pyproject.toml pins torch"
    return match.group(1)


DOCKERFILES = {
    "shim": ["python", "-m", "api_shim"],
    "controller": CONTROLLER_COMMAND,
    "runtime": None,
}


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile(image: str) -> None:
    path = CONFIG / image / "Dockerfile"
    steps = m.dockerfile_instructions(path)
    froms = [args.split()[0] for op, args in steps if op == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms), froms
    runs = " ".join(args for op, args in steps if op == "RUN")
    pin = _pyproject_torch_pin()
    assert f"pip install {pin} --index-url https://download.pytorch.org/whl/cpu" in runs
    for op, args in steps:
        if op == "COPY" and "--from" not in args:
            for src in shlex.split(args)[:-1]:
                assert (ROOT / src).exists(), f"{path}: COPY {src} does not exist"
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and not users[-1].startswith("0")
    cmd = [args for op, args in final if op == "CMD"]
    assert cmd, f"{path}: no CMD"
    expected = DOCKERFILES[image]
    if expected is not None:
        assert yaml.safe_load(cmd[-1]) == expected
    # BuildKit's per-Dockerfile ignore file: the context is only what COPY needs.
    ignore = [
        line
        for line in (path.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    for op, args in steps:
        if op == "COPY" and "--from" not in args:
            for src in shlex.split(args)[:-1]:
                assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is ignored"


def test_runtime_image_ships_the_library_and_the_jobs_run_its_entry_point() -> None:
    from controller.executors.manifests import POD_COMMAND

    steps = m.dockerfile_instructions(CONFIG / "runtime" / "Dockerfile")
    copied = {
        src
        for op, args in steps
        if op == "COPY" and "--from" not in args
        for src in shlex.split(args)[:-1]
    }
    assert copied == {"pyproject.toml", "README.md", "dyff"}
    # The Jobs' command is a module of the library (python -m dyff.workloads.pod).
    module = POD_COMMAND[-1]
    assert module.startswith("dyff.") and (ROOT / (module.replace(".", "/") + ".py")).is_file()


def test_controller_image_runs_as_the_deployment_user() -> None:
    steps = m.dockerfile_instructions(CONFIG / "controller" / "Dockerfile")
    user = [args for op, args in steps if op == "USER"][-1].split(":")[0]
    pod = controller_deployment(rendered("base"))["spec"]["template"]["spec"]
    assert int(user) == pod["securityContext"]["runAsUser"]


def test_dockerfile_parser_joins_continuations(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text('# c\nFROM a:1 AS b\nRUN x \\\n  && y\n\nCMD ["z"]\n')
    got: list[Any] = m.dockerfile_instructions(path)
    assert got == [("FROM", "a:1 AS b"), ("RUN", "x  && y"), ("CMD", '["z"]')]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_controller_may_hold_its_lease_and_nothing_else_in_its_namespace(name: str) -> None:
    objs = rendered(name)
    (role,) = m.find(objs, "Role")
    (binding,) = m.find(objs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "patch"],
        }
    ]
    account = controller_deployment(objs)["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
