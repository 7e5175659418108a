"""The Python client of dyff's HTTP API; the CLI is a thin layer over it."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dyff.errors import DyffError

CHUNK = 1024 * 1024
DEFAULT_CONFIG = Path.home() / ".config" / "dyff" / "config.json"
KINDS = ("models", "datasets", "evaluations")
LONG_POLL_S = 20.0  # one look at a waited-for entity (the server bounds it at 30 s)


class ApiError(DyffError):
    """An error answer of the API (problem+json), carried to the caller."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        super().__init__(str(detail), field=problem.get("field"))
        self.status = status
        self.problem = problem


@dataclass
class ClientConfig:
    server: str
    api_key: str

    @classmethod
    def load(cls, server: str | None = None, api_key: str | None = None) -> ClientConfig:
        """Flags win over the environment (DYFF_SERVER, DYFF_API_KEY), which wins over the
        config file (DYFF_CONFIG, default ~/.config/dyff/config.json)."""
        path = config_path()
        saved: dict[str, str] = {}
        if path.exists():
            saved = json.loads(path.read_text())
        server = server or os.environ.get("DYFF_SERVER") or saved.get("server")
        api_key = api_key or os.environ.get("DYFF_API_KEY") or saved.get("apiKey")
        if not server or not api_key:
            raise DyffError(
                "no server or API key: pass --server/--key, set DYFF_SERVER/DYFF_API_KEY, "
                f"or run 'dyff up', which writes {path}"
            )
        return cls(server.rstrip("/"), api_key)

    def save(self) -> Path:
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"server": self.server, "apiKey": self.api_key}))
        path.chmod(0o600)
        return path


def config_path() -> Path:
    return Path(os.environ.get("DYFF_CONFIG") or DEFAULT_CONFIG)


def file_digest(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def pack_directory(folder: Path, dest: Path) -> Path:
    """A folder as a .tar.gz of its regular files (no links), deterministic order and
    bytes (the gzip header's time is 0), so packing it again gives the same sha256."""
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    return dest


class Client:
    def __init__(self, config: ClientConfig, timeout: float = 60.0) -> None:
        self.config = config
        self.http = httpx.Client(
            base_url=config.server,
            headers={"Authorization": f"Bearer {config.api_key}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return _checked(self.http.request(method, path, **kwargs))

    # ---------------------------------------------------------- entities

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a model, dataset or evaluation; returns the answer's JSON."""
        result: dict[str, Any] = self._call("POST", f"/v1/{plural}", json=body).json()
        return result

    def get(self, plural: str, name: str, account: str | None = None) -> dict[str, Any]:
        params = {"account": account} if account else None
        path = f"/v1/{plural}/{_seg(name)}"
        result: dict[str, Any] = self._call("GET", path, params=params).json()
        return result

    def list_all(self, plural: str, **filters: Any) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
        while True:
            page = self._call("GET", f"/v1/{plural}", params=params).json()
            yield from page["items"]
            if not page.get("nextPageToken"):
                return
            params["pageToken"] = page["nextPageToken"]

    def delete(self, plural: str, name: str, cascade: bool = False) -> dict[str, Any]:
        params = {"cascade": "true"} if cascade else None
        path = f"/v1/{plural}/{_seg(name)}"
        result: dict[str, Any] = self._call("DELETE", path, params=params).json()
        return result

    # ------------------------------------------------------------ upload

    def register_upload(
        self,
        plural: str,
        name: str,
        form: str,
        path: Path,
        *,
        labels: dict[str, str] | None = None,
        extra_spec: dict[str, Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Register a model or dataset with an upload source and upload the file (a folder
        is packed as .tar.gz first). Returns the created entity."""
        with tempfile.TemporaryDirectory() as tmp:
            if path.is_dir():
                path = pack_directory(path, Path(tmp) / f"{name}.tar.gz")
            sha256, size = file_digest(path)
            spec = {
                **(extra_spec or {}),
                "source": {
                    "form": form,
                    "upload": {"sha256": sha256, "sizeBytes": size, "filename": path.name},
                },
            }
            created = self.create(plural, {"name": name, "labels": labels or {}, "spec": spec})
            if created.get("upload"):
                self.upload(created["upload"], path, size, progress)
                self._upload_done(plural, name, created["upload"])
            item: dict[str, Any] = created["item"]
            return item

    def register_image(
        self,
        name: str,
        reference: str,
        *,
        port: int = 3000,
        labels: dict[str, str] | None = None,
        extra_spec: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register an image-form model: a container image running a service that speaks
        image-classification/v1, pinned by digest (`REPO@sha256:<64 hex>`). Returns the
        created entity."""
        spec = {
            **(extra_spec or {}),
            "source": {"form": "image", "image": {"reference": reference, "port": port}},
        }
        created = self.create("models", {"name": name, "labels": labels or {}, "spec": spec})
        item: dict[str, Any] = created["item"]
        return item

    def resume_upload(
        self,
        plural: str,
        name: str,
        path: Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Upload the file of a model or dataset still waiting for it, with a fresh ticket
        (the registration's expired or was lost). `path` must be what was declared (a
        folder is packed again, to the same bytes). Returns the entity."""
        entity = self.get(plural, name)
        declared = ((entity.get("spec") or {}).get("source") or {}).get("upload") or {}
        with tempfile.TemporaryDirectory() as tmp:
            if path.is_dir():
                path = pack_directory(path, Path(tmp) / f"{name}.tar.gz")
            sha256, size = file_digest(path)
            if (sha256, size) != (declared.get("sha256"), declared.get("sizeBytes")):
                raise DyffError(
                    f"{path.name} ({size} bytes, sha256 {sha256[:12]}) is not the upload "
                    f"{plural[:-1]} {name} declared ({declared.get('sizeBytes')} bytes, "
                    f"sha256 {str(declared.get('sha256'))[:12]})"
                )
            info = self._call("POST", f"/v1/{plural}/{_seg(name)}/upload").json()
            self.upload(info, path, size, progress)
            self._upload_done(plural, name, info)
        return self.get(plural, name)

    def _upload_done(self, plural: str, name: str, info: dict[str, Any]) -> None:
        """After an upload to a signed URL (Cloud Storage tells no one), say it is done,
        so ingestion starts now and not at the controller's next timer."""
        if info["method"] == "POST":
            self._call("POST", f"/v1/{plural}/{_seg(name)}/upload/done")

    def upload(
        self,
        info: dict[str, Any],
        path: Path,
        size: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        def chunks() -> Iterator[bytes]:
            sent = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    sent += len(chunk)
                    if progress:
                        progress(sent, size)
                    yield chunk

        headers = {"Content-Length": str(size), **info.get("headers", {})}
        with httpx.Client(timeout=None) as plain:  # the upload URL carries its own auth
            if info["method"] == "POST":
                # A GCS signed resumable upload: start the session, then send the bytes.
                start = plain.post(info["url"], headers={**info.get("headers", {})})
                start.raise_for_status()
                response = plain.put(
                    start.headers["Location"],
                    content=chunks(),
                    headers={"Content-Length": str(size)},
                )
            else:
                headers["X-Dyff-Upload-Token"] = info["token"]
                response = plain.put(info["url"], content=chunks(), headers=headers)
        _checked(response)

    # ------------------------------------------------------- evaluations

    def order(
        self,
        model: str,
        dataset: str,
        *,
        name: str | None = None,
        top_k: int | None = None,
        metrics: list[str] | None = None,
        labels: dict[str, str] | None = None,
        label_mapping: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Order an evaluation; returns it and whether it was new (201) or existing (200).
        `label_mapping` is the spec's labelMapping: `{"byIndex": True}` or
        `{"map": {model label: dataset label}}`."""
        spec: dict[str, Any] = {"model": _ref(model), "dataset": _ref(dataset)}
        if top_k is not None:
            spec["inference"] = {"topK": top_k}
        if metrics:
            spec["metrics"] = metrics
        if label_mapping:
            spec["labelMapping"] = label_mapping
        body: dict[str, Any] = {"spec": spec, "labels": labels or {}}
        if name:
            body["name"] = name
        response = self._call("POST", "/v1/evaluations", json=body)
        return response.json(), response.status_code == 201

    def wait(
        self,
        plural: str,
        name: str,
        *,
        until: tuple[str, ...] | None = None,
        timeout: float = 1800,
        interval: float = 1.0,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Follow the entity until its phase is one of `until` (default: the kind's success
        phase), or its failure phase, which raises. Each look is a long poll (`changedFrom`,
        `wait`): the server answers as soon as the entity changes, so no time is lost
        between a change and seeing it; `interval` only paces a server that answers at once."""
        from dyff.lifecycle import lifecycle
        from dyff.schema import RESOURCE_TYPES

        life = lifecycle(next(t.kind_name for t in RESOURCE_TYPES if t.plural == plural))
        until = until or (life.succeeded,)
        deadline = time.monotonic() + timeout
        path = f"/v1/{plural}/{_seg(name)}"
        version: str | None = None
        while True:
            asked = time.monotonic()
            left = max(0.0, deadline - asked)
            params = {"changedFrom": version, "wait": min(LONG_POLL_S, left)} if version else None
            entity: dict[str, Any] = self._call("GET", path, params=params).json()
            seen = (entity.get("metadata") or {}).get("resourceVersion")
            if on_change:
                on_change(entity)
            phase = (entity.get("status") or {}).get("phase")
            if phase in until:
                return entity
            if phase == life.failed:
                raise DyffError(f"{plural[:-1]} {name} failed: {failure(entity)}")
            if time.monotonic() > deadline:
                raise DyffError(f"{plural[:-1]} {name} still {phase} after {timeout:.0f}s")
            if version is not None and seen == version and time.monotonic() - asked < interval:
                time.sleep(interval)  # a server without long polls answered at once
            version = seen

    def metrics(self, name: str) -> dict[str, Any]:
        path = f"/v1/evaluations/{_seg(name)}/metrics"
        result: dict[str, Any] = self._call("GET", path).json()
        return result

    def label_names(self, name: str) -> list[str]:
        """Names of the label ids in an evaluation's predictions (index = id)."""
        page = self.predictions(name, limit=1, columns=["row_id"])
        return [str(x) for x in page.get("labels") or []]

    def predictions(self, name: str, **query: Any) -> dict[str, Any]:
        params = {k: v for k, v in query.items() if v is not None}
        result: dict[str, Any] = self._call(
            "GET", f"/v1/evaluations/{_seg(name)}/predictions", params=params
        ).json()
        return result

    def report(self, name: str) -> str:
        return self._call("GET", f"/v1/evaluations/{_seg(name)}/report").text

    def compare(
        self, a: str, b: str, *, resamples: int | None = None, seed: int | None = None
    ) -> dict[str, Any]:
        """Paired comparison of two complete evaluations (B against A) on their common rows."""
        params = {k: v for k, v in (("resamples", resamples), ("seed", seed)) if v is not None}
        result: dict[str, Any] = self._call(
            "GET", "/v1/comparisons", params={"a": a, "b": b, **params}
        ).json()
        return result

    def comparison_rows(
        self, a: str, b: str, kind: str | None = None, *, offset: int = 0, limit: int = 100
    ) -> dict[str, Any]:
        """Rows `fixed` (A wrong, B right) or `broken` (A right, B wrong), paged."""
        params: dict[str, Any] = {"a": a, "b": b, "offset": offset, "limit": limit}
        if kind:
            params["kind"] = kind
        result: dict[str, Any] = self._call("GET", "/v1/comparisons/rows", params=params).json()
        return result

    def comparison_report(self, a: str, b: str) -> str:
        """The comparison as a self-contained HTML page (with thumbnails of flipped rows)."""
        return self._call("GET", "/v1/comparisons/report", params={"a": a, "b": b}).text

    def leaderboard(
        self,
        dataset: str,
        metric: str = "accuracy",
        *,
        account: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """The caller's complete evaluations on a dataset, ranked by `metric`."""
        params: dict[str, Any] = {"metric": metric}
        if account:
            params["account"] = account
        if limit:
            params["limit"] = limit
        path = f"/v1/datasets/{_seg(dataset)}/leaderboard"
        result: dict[str, Any] = self._call("GET", path, params=params).json()
        return result

    # -------------------------------------------------------------- apply

    def apply(self, doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Create what a custom-resource document describes; the same YAML kubectl applies.
        Returns (what happened, entity): created, unchanged, or an ApiError."""
        kind = doc.get("kind")
        plural = {"Model": "models", "Dataset": "datasets", "Evaluation": "evaluations"}.get(
            str(kind)
        )
        if plural is None or doc.get("apiVersion") != "dyff.io/v1alpha1":
            raise DyffError(f"not a dyff.io/v1alpha1 Model, Dataset or Evaluation: {kind!r}")
        meta = doc.get("metadata") or {}
        name = str(meta.get("name"))
        body = {"name": name, "labels": meta.get("labels") or {}, "spec": doc.get("spec")}
        if plural == "evaluations":
            response = self._call("POST", "/v1/evaluations", json=body)
            return ("created" if response.status_code == 201 else "unchanged"), response.json()
        try:
            return "created", self.create(plural, body)["item"]
        except ApiError as exc:
            if exc.status != 409:
                raise
            existing = self.get(plural, name)
            if _same_spec(existing.get("spec") or {}, doc.get("spec") or {}):
                return "unchanged", existing
            raise


def _checked(response: httpx.Response) -> httpx.Response:
    """The response, or ApiError carrying its problem document."""
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {"detail": response.text[:500]}
        raise ApiError(response.status_code, problem)
    return response


def failure(entity: dict[str, Any]) -> str:
    """Why an entity failed: its Ready condition's reason and the status message."""
    status = entity.get("status") or {}
    conditions: list[dict[str, Any]] = status.get("conditions") or []
    ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    reason = ready.get("reason")
    message = status.get("message") or ready.get("message") or "no message"
    return f"{reason}: {message}" if reason else str(message)


def _seg(name: str) -> str:
    """`name` as one URL path segment: every reserved character escaped, and `.`/`..`
    escaped too (httpx would resolve them as dot segments), so no name can change the route."""
    quoted = urllib.parse.quote(name, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _ref(value: str) -> dict[str, str]:
    """`name` or `account/name` (a public entity of another account)."""
    account, _, name = value.rpartition("/")
    return {"name": name, **({"account": account} if account else {})}


def _same_spec(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether `wanted` (as written, defaults omitted) matches the stored spec."""
    for key, value in wanted.items():
        if isinstance(value, dict):
            if not isinstance(stored.get(key), dict) or not _same_spec(stored[key], value):
                return False
        elif stored.get(key) != value:
            return False
    return True
