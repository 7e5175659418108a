"""Model validation and packaging: pure functions over folders and files, no records.

The three forms a Model arrives in:

- **transformers**: a folder (inside an archive) with `config.json`,
  `preprocessor_config.json` and `*.safetensors` weights of a
  `*ForImageClassification` architecture. `validate_transformers_dir`
  checks it without running anything of the user's (no pickle, no custom
  code, never `trust_remote_code`); `package_transformers` wraps it in dyff's
  BentoML service (`dyff/runtime/service.py`) and exports a Bento archive.
- **bento**: a Bento archive (`bentoml export`; `import_bento_archive`). A
  Bento of dyff's own service (its `src/service.py` byte-identical to
  `dyff/runtime/service.py`, model under `src/model/`) is validated like the
  transformers form and repackaged with the current service. Any other Bento
  is the user's own service: accepted when its `bento.yaml` declares the APIs
  of the public protocol `image-classification/v1` (docs/serving-protocol.md)
  and dyff's environment satisfies its Python requirements; its code is kept
  as it is and runs only as its own model server (`ModelStatus.userCode`).
- **image**: a container image running a service that speaks
  `image-classification/v1`, pinned by digest
  (`validate_image_reference`; controller/executors/manifests.py runs it as the
  evaluation's model server). It needs a container runtime;
  `local_image_support` says whether there is one.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyff.errors import WorkloadFailed
from dyff.untrusted import load_json, load_yaml

# Failure reasons (the Ready condition's reason on the Model).
PICKLE_WEIGHTS = "PickleWeights"
REMOTE_CODE = "RemoteCode"
UNSUPPORTED_ARCHITECTURE = "UnsupportedArchitecture"
UNSUPPORTED_WEIGHTS = "UnsupportedWeights"
MISSING_LABELS = "MissingLabels"
MISSING_FILE = "MissingFile"
BAD_CONFIG = "BadConfig"
BAD_WEIGHTS = "BadWeights"
UNSUPPORTED_FILE = "UnsupportedFile"
UNSUPPORTED_BENTO = "UnsupportedBento"
INVALID_IMAGE = "InvalidImageReference"
CONTAINER_RUNTIME_UNAVAILABLE = "ContainerRuntimeUnavailable"
PACKAGING_FAILED = "PackagingFailed"
MODEL_DOES_NOT_RUN = "ModelDoesNotRun"
MISSING_PACKAGES = "MissingPackages"
MODEL_SERVER_FAILED = "ModelServerFailed"
PROTOCOL_VIOLATION = "ProtocolViolation"

# The public serving protocol a user's service speaks (docs/serving-protocol.md).
PROTOCOL = "image-classification/v1"
METADATA_API = "metadata"
CLASSIFY_API = "classify_images"

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Weight formats that are pickles (loading one runs arbitrary code).
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib"})
# Other weight formats transformers could read but dyff does not package.
OTHER_WEIGHT_SUFFIXES = frozenset({".h5", ".msgpack", ".onnx", ".gguf", ".tflite", ".keras"})
CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".so", ".pyd", ".sh", ".ipynb"})
# Files that are packaged (and digested); anything else harmless is left out.
KEPT_JSON = frozenset({CONFIG, PREPROCESSOR, SAFETENSORS_INDEX})
ARCHITECTURE_PATTERN = re.compile(r"^[A-Z][A-Za-z0-9]*ForImageClassification$")
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# What the service accepts as one image (dyff/runtime/service.py MAX_PIXELS).
MAX_SERVED_PIXELS = 8192 * 8192

SERVICE_SOURCE = Path(__file__).resolve().parent / "runtime" / "service.py"
SERVICE_TARGET = "service:ImageClassifier"
SERVICE_NAME = "dyff-image-classifier"
BENTO_NAME = "dyff-model"
# Requirements written into the Bento (used when it is containerised).
BENTO_PACKAGES = ["torch==2.13.0", "transformers>=4.44", "safetensors", "numpy", "pillow"]


@dataclass(frozen=True)
class ModelInfo:
    """What validation learned about a transformers model folder."""

    root: Path
    architecture: str
    model_type: str
    labels: list[str]
    files: list[str] = field(default_factory=list)
    size_bytes: int = 0
    image_size: tuple[int, int] | None = None


# ------------------------------------------------------------------ validation


def find_model_root(path: Path) -> Path:
    """The folder holding config.json: `path` itself or, through single wrapping folders,
    the one inside (archives are often made of a folder rather than of its contents)."""
    path = Path(path)
    if (path / CONFIG).is_file() or not path.is_dir():
        return path
    children = [p for p in path.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return find_model_root(children[0])
    return path


def _walk(root: Path) -> list[str]:
    """Relative POSIX paths of every file under `root`; links and special files refused."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise WorkloadFailed(UNSUPPORTED_FILE, f"{_rel(p, root)}: links are not allowed")
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_file():
                raise WorkloadFailed(UNSUPPORTED_FILE, f"{_rel(p, root)}: not a regular file")
            out.append(_rel(p, root))
    return sorted(out)


def _rel(p: Path, root: Path) -> str:
    return p.relative_to(root).as_posix()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise WorkloadFailed(MISSING_FILE, f"{what} is missing ({path.name} required)")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise WorkloadFailed(BAD_CONFIG, f"{path.name} is larger than {MAX_JSON_BYTES} bytes")
    doc = load_json(path.read_bytes(), path.name, BAD_CONFIG)
    if not isinstance(doc, dict):
        raise WorkloadFailed(BAD_CONFIG, f"{path.name} must hold a JSON object")
    return doc


def _check_files(files: list[str]) -> list[str]:
    """Refuse pickles, code and foreign weight formats; return the files to keep."""
    pickles = [f for f in files if Path(f).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise WorkloadFailed(
            PICKLE_WEIGHTS,
            f"pickle weights are refused ({', '.join(pickles[:5])}): loading them runs "
            "arbitrary code; save the model with safetensors "
            "(save_pretrained(..., safe_serialization=True))",
        )
    code = [f for f in files if Path(f).suffix.lower() in CODE_SUFFIXES]
    if code:
        raise WorkloadFailed(
            REMOTE_CODE,
            f"custom code is refused ({', '.join(code[:5])}): dyff never runs code shipped "
            "with a model (no trust_remote_code); use an architecture built into transformers",
        )
    other = [f for f in files if Path(f).suffix.lower() in OTHER_WEIGHT_SUFFIXES]
    if other:
        raise WorkloadFailed(
            UNSUPPORTED_WEIGHTS,
            f"unsupported weight files ({', '.join(other[:5])}); only *.safetensors is accepted",
        )
    # Only top-level files are read by transformers; anything nested is left out.
    return [f for f in files if f in KEPT_JSON or ("/" not in f and f.endswith(".safetensors"))]


def _check_safetensors(path: Path, name: str) -> None:
    """The header is safetensors' (length + JSON) and describes tensors inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WorkloadFailed(BAD_WEIGHTS, f"{name}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise WorkloadFailed(BAD_WEIGHTS, f"{name}: not a safetensors file (bad header)")
        header = load_json(f.read(n), f"{name}: the safetensors header", BAD_WEIGHTS)
    if not isinstance(header, dict):
        raise WorkloadFailed(BAD_WEIGHTS, f"{name}: not a safetensors file")
    data_size = size - 8 - n
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise WorkloadFailed(BAD_WEIGHTS, f"{name}: tensor {key!r} lies outside the file")


def _check_config(config: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(architecture, model_type, labels) of a config.json, or a refusal."""
    if "auto_map" in config or "custom_pipelines" in config:
        raise WorkloadFailed(
            REMOTE_CODE,
            "config.json has auto_map/custom_pipelines (custom code); dyff never uses "
            "trust_remote_code — use an architecture built into transformers",
        )
    archs = config.get("architectures")
    if not (isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], str)):
        raise WorkloadFailed(
            UNSUPPORTED_ARCHITECTURE,
            "config.json must name exactly one architecture (architectures: [...])",
        )
    arch = archs[0]
    import transformers
    from transformers import CONFIG_MAPPING

    if not ARCHITECTURE_PATTERN.match(arch) or not hasattr(transformers, arch):
        raise WorkloadFailed(
            UNSUPPORTED_ARCHITECTURE,
            f"architecture {arch!r} is not supported: task image-classification needs a "
            "*ForImageClassification class built into transformers",
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise WorkloadFailed(
            UNSUPPORTED_ARCHITECTURE, f"model_type {model_type!r} is not known to transformers"
        )
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise WorkloadFailed(
            MISSING_LABELS, "config.json has no id2label: the model's class labels are required"
        )
    try:
        by_id = {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise WorkloadFailed(MISSING_LABELS, "id2label keys must be class ids 0..N-1") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise WorkloadFailed(MISSING_LABELS, "id2label keys must be class ids 0..N-1")
    labels = [by_id[i] for i in range(len(by_id))]
    if not all(isinstance(v, str) and v for v in labels):
        raise WorkloadFailed(MISSING_LABELS, "id2label values must be non-empty strings")
    if len(set(labels)) != len(labels):
        raise WorkloadFailed(MISSING_LABELS, "id2label values must be distinct")
    return arch, model_type, labels


def validate_transformers_dir(path: Path, *, load_check: bool = True) -> ModelInfo:
    """Check a transformers image-classification folder; raise WorkloadFailed with a reason.

    Refused: pickle weights (PickleWeights), custom code or auto_map
    (RemoteCode), a non-*ForImageClassification or unknown architecture
    (UnsupportedArchitecture), no id2label (MissingLabels), no config,
    preprocessor or safetensors weights (MissingFile), damaged files
    (BadConfig, BadWeights). With `load_check`, the model and its processor
    are loaded once (safetensors, no remote code) to prove the weights fit.
    """
    root = find_model_root(Path(path))
    if not root.is_dir():
        raise WorkloadFailed(MISSING_FILE, "the model is not a folder")
    kept = _check_files(_walk(root))
    config = _read_json(root / CONFIG, "the model configuration")
    arch, model_type, labels = _check_config(config)
    pre = _read_json(root / PREPROCESSOR, "the image preprocessor configuration")
    image_size = _image_size(pre)
    if "auto_map" in pre:
        raise WorkloadFailed(REMOTE_CODE, "preprocessor_config.json has auto_map (custom code)")
    weights = [f for f in kept if f.endswith(".safetensors")]
    if not weights:
        raise WorkloadFailed(MISSING_FILE, "no *.safetensors weights found")
    for name in weights:
        _check_safetensors(root / name, name)
    if SAFETENSORS_INDEX in kept:
        index = _read_json(root / SAFETENSORS_INDEX, "the weights index")
        shards = set((index.get("weight_map") or {}).values())
        missing = sorted(s for s in shards if not isinstance(s, str) or s not in weights)
        if missing:
            raise WorkloadFailed(MISSING_FILE, f"weight shards missing: {missing[:5]}")
    if load_check:
        _load_check(root, image_size)
    return ModelInfo(
        root=root,
        architecture=arch,
        model_type=model_type,
        labels=labels,
        files=kept,
        size_bytes=sum((root / f).stat().st_size for f in kept),
        image_size=image_size,
    )


def _image_size(pre: dict[str, Any]) -> tuple[int, int] | None:
    size = pre.get("crop_size") if pre.get("do_center_crop") else pre.get("size")
    if isinstance(size, dict) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if isinstance(size, dict) and "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


def _load_check(root: Path, image_size: tuple[int, int] | None) -> None:
    """Load model and processor the way the server will, and classify one image of the
    processor's declared size: a model that cannot is the user's error, said now rather
    than when an evaluation serves it."""
    import transformers
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = AutoModelForImageClassification.from_pretrained(
            root,
            trust_remote_code=False,
            use_safetensors=True,
            local_files_only=True,
            output_loading_info=True,
        )
        processor = AutoImageProcessor.from_pretrained(
            root, trust_remote_code=False, local_files_only=True
        )
    except Exception as exc:  # transformers raises many types for a bad folder
        raise WorkloadFailed(BAD_WEIGHTS, f"the model does not load: {_scrub(exc, root)}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise WorkloadFailed(
            BAD_WEIGHTS,
            "the weights do not fit the architecture: "
            f"missing {missing[:5]}, mismatched {[m[0] for m in mismatched[:5]]}",
        )
    _test_classify(model, processor, image_size, root)


def _test_classify(model: Any, processor: Any, size: tuple[int, int] | None, root: Path) -> None:
    """One gray image of the declared size (224 x 224 if none) through the processor and
    the forward pass, as the service will do it; ModelDoesNotRun with the error if not."""
    import numpy as np
    import torch
    from PIL import Image

    h, w = size or (224, 224)
    if not (h > 0 and w > 0 and h * w <= MAX_SERVED_PIXELS):
        raise WorkloadFailed(
            MODEL_DOES_NOT_RUN,
            f"the processor declares {w}x{h} images; dyff serves images of at most "
            f"{MAX_SERVED_PIXELS} pixels",
        )
    try:
        with torch.inference_mode():
            pixels = processor(images=[Image.new("RGB", (w, h), (128, 128, 128))])
            batch = torch.from_numpy(np.stack(pixels["pixel_values"]))
            logits = model.eval()(pixel_values=batch).logits
    except Exception as exc:  # whatever the model raises is the user's error
        raise WorkloadFailed(
            MODEL_DOES_NOT_RUN,
            f"the model cannot classify a {w}x{h} image prepared by its own processor: "
            f"{_scrub(exc, root)}",
        ) from None
    if tuple(logits.shape) != (1, len(model.config.id2label)):
        raise WorkloadFailed(
            MODEL_DOES_NOT_RUN,
            f"the model answers logits of shape {tuple(logits.shape)} for one image, not "
            f"(1, {len(model.config.id2label)}) for its labels",
        )


def _scrub(exc: BaseException, root: Path) -> str:
    """An exception's first line, without the server's paths (users see it in status)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
    for path in {str(root), str(root.resolve()), str(root.parent)}:
        text = text.replace(path, "<model>")
    return text


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def model_digest(path: Path, files: list[str] | None = None) -> str:
    """sha256 over the sorted (relative path, file sha256) list of the model's kept files.

    The model's identity for reuse: the same folder, however archived, gets
    the same digest. Files validation leaves out (README, .gitattributes) do
    not count.
    """
    root = find_model_root(Path(path))
    names = sorted(files if files is not None else _check_files(_walk(root)))
    h = hashlib.sha256()
    for name in names:
        h.update(f"{_file_sha256(root / name)}  {name}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------- packaging


def bento_env(bentoml_home: Path) -> dict[str, str]:
    """Environment for BentoML subprocesses: offline, no telemetry, a private home."""
    env = dict(os.environ)
    env.update(
        BENTOML_HOME=str(bentoml_home),
        BENTOML_DO_NOT_TRACK="true",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def package_transformers(
    model_dir: Path,
    workdir: Path,
    *,
    info: ModelInfo | None = None,
    digest: str | None = None,
    timeout: float = 900,
) -> Path:
    """Build dyff's Bento around a validated model folder and export it to one archive.

    The build runs `bentoml` in a subprocess with `BENTOML_HOME` inside
    `workdir` (never the user's ~/bentoml), offline (`lock_packages: false`,
    no telemetry). Returns the archive (a tar.gz Bento export).
    """
    workdir = Path(workdir)
    info = info or validate_transformers_dir(model_dir)
    digest = digest or model_digest(info.root, info.files)
    ctx = workdir / "bento-ctx"
    if ctx.exists():
        shutil.rmtree(ctx)
    (ctx / "model").mkdir(parents=True)
    shutil.copyfile(SERVICE_SOURCE, ctx / "service.py")
    for name in info.files:
        target = ctx / "model" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info.root / name, target)
    out = workdir / "model.bento"
    out.unlink(missing_ok=True)
    spec = {
        "ctx": str(ctx),
        "out": str(out),
        "service": SERVICE_TARGET,
        "name": BENTO_NAME,
        "version": digest[:32],
        "labels": {"dyff.io/digest": digest, "dyff.io/architecture": info.architecture},
        "packages": BENTO_PACKAGES,
    }
    home = workdir / "bentoml-home"
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "dyff.runtime.bentobuild", json.dumps(spec)],
        env=bento_env(home),
        cwd=ctx,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0 or not out.is_file():
        # Our own build failing is a platform error, not the user's: raise plainly.
        raise RuntimeError(f"bento build failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return out


@dataclass(frozen=True)
class ImportedBento:
    """A Bento archive checked and unpacked: its bento.yaml, and either the model inside
    (dyff's own service) or the user's service (`user_code`, `info` None)."""

    bento_dir: Path
    manifest: dict[str, Any]
    info: ModelInfo | None
    user_code: bool = False
    # The model's identity: `model_digest` of the model folder (dyff's own service) or
    # `bento_digest` of the whole Bento (a user's service).
    digest: str = ""


def _unxz(archive: Path, dest: Path, max_bytes: int) -> Path:
    """BentoML's default `.bento` export is tar.xz, which safe_extract does not read:
    decompress it to a plain tar first, metered so that a bomb stops at `max_bytes`."""
    n = 0
    try:
        with lzma.open(archive, "rb") as src, open(dest, "wb") as out:
            while chunk := src.read(1 << 20):
                n += len(chunk)
                if n > max_bytes:
                    raise WorkloadFailed(
                        "UnsafeArchive", f"{archive.name} expands to more than {max_bytes} bytes"
                    )
                out.write(chunk)
    except lzma.LZMAError as exc:
        raise WorkloadFailed("BadArchive", f"{archive.name}: damaged xz data: {exc}") from None
    return dest


def extract_archive(archive: Path, dest: Path) -> Path:
    """Safely extract a user archive (tar, tar.gz, zip, or BentoML's tar.xz) into `dest`."""
    from dyff.archives import DEFAULT_LIMITS, safe_extract

    archive = Path(archive)
    with open(archive, "rb") as f:
        magic = f.read(6)
    if magic == b"\xfd7zXZ\x00":
        dest.parent.mkdir(parents=True, exist_ok=True)
        archive = _unxz(archive, dest.parent / f".{dest.name}.tar", DEFAULT_LIMITS.max_total_bytes)
        try:
            safe_extract(archive, dest)
        finally:
            archive.unlink(missing_ok=True)
    else:
        safe_extract(archive, dest)
    return dest


def unpack_bento(archive: Path, dest: Path, *, user_code: bool = False) -> Path:
    """Unpack a stored Bento archive for serving (checked extraction). A Bento of dyff's own
    service gets the current `dyff/runtime/service.py`: the code that computes predictions
    is always the one the prediction cache is keyed by (`dyff.runtime.runtime_version`).
    A user's service (`user_code`) is served exactly as it was uploaded."""

    dest = Path(dest)
    if not (dest / "bento.yaml").is_file():
        extract_archive(archive, dest)
    if user_code:
        return dest
    manifest = load_yaml((dest / "bento.yaml").read_bytes(), "bento.yaml", UNSUPPORTED_BENTO) or {}
    service = dest / "src" / "service.py"
    # dyff's layout only (a user's service may share the target name `service:…`).
    if (
        isinstance(manifest, dict)
        and manifest.get("service") == SERVICE_TARGET
        and manifest.get("entry_service") == SERVICE_NAME
        and (dest / "src" / "model").is_dir()
        and service.is_file()
    ):
        shutil.copyfile(SERVICE_SOURCE, service)
    return dest


def _bento_root(bento_dir: Path) -> Path:
    """The folder holding bento.yaml: the archive's top, or its one folder."""
    if (bento_dir / "bento.yaml").is_file():
        return bento_dir
    subdirs = [p for p in bento_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    if len(subdirs) == 1 and (subdirs[0] / "bento.yaml").is_file():
        return subdirs[0]
    raise WorkloadFailed(UNSUPPORTED_BENTO, "not a Bento: bento.yaml is missing")


def read_manifest(bento_dir: Path) -> dict[str, Any]:
    """bento.yaml, bounded in size and nesting; it must name a service."""
    path = bento_dir / "bento.yaml"
    if path.stat().st_size > MAX_JSON_BYTES:
        raise WorkloadFailed(UNSUPPORTED_BENTO, "bento.yaml is too large")
    manifest = load_yaml(path.read_bytes(), "bento.yaml", UNSUPPORTED_BENTO)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("service"), str):
        raise WorkloadFailed(UNSUPPORTED_BENTO, "bento.yaml names no service")
    return manifest


def is_dyff_bento(bento_dir: Path, manifest: dict[str, Any]) -> bool:
    """dyff's own Bento: dyff's layout, and its service.py byte for byte the current
    dyff/runtime/service.py. Anything else (an older or edited copy included) is a
    user's service, whose code is kept and run as theirs, never replaced by ours."""
    service = bento_dir / "src" / "service.py"
    return (
        manifest.get("service") == SERVICE_TARGET
        and manifest.get("entry_service") == SERVICE_NAME
        and service.is_file()
        and not service.is_symlink()
        and (bento_dir / "src" / "model").is_dir()
        and service.read_bytes() == SERVICE_SOURCE.read_bytes()
    )


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _schema_type(schema: Any) -> str | None:
    return schema.get("type") if isinstance(schema, dict) else None


def check_protocol_routes(manifest: dict[str, Any]) -> None:
    """The entry service declares the APIs of `image-classification/v1` with the IO types
    BentoML 1.4 writes for them (`schema.routes` of bento.yaml); UnsupportedBento naming
    the API that is missing or of the wrong type."""
    schema = manifest.get("schema")
    routes = schema.get("routes") if isinstance(schema, dict) else None
    by_name = {
        r.get("name"): r
        for r in (routes if isinstance(routes, list) else [])
        if isinstance(r, dict)
    }
    name = manifest.get("entry_service") or manifest["service"]
    missing = [api for api in (METADATA_API, CLASSIFY_API) if api not in by_name]
    if missing:
        raise WorkloadFailed(
            UNSUPPORTED_BENTO,
            f"service {name!r} lacks the API {' and '.join(missing)} of protocol {PROTOCOL} "
            f"(it has {sorted(str(n) for n in by_name)[:10]}); see docs/serving-protocol.md",
        )
    problems = []
    meta = by_name[METADATA_API]
    meta_in = _object(meta.get("input"))
    if meta_in.get("required"):
        problems.append(
            f"{METADATA_API} must take no required input, not {meta_in['required'][:5]}"
        )
    if _schema_type(meta.get("output")) != "object":
        problems.append(f"{METADATA_API} must answer a JSON object (a dict)")
    classify = by_name[CLASSIFY_API]
    c_in = _object(classify.get("input"))
    images = _object(c_in.get("properties")).get("images")
    items = _object(images).get("items")
    if not (_schema_type(images) == "array" and _schema_type(items) == "file"):
        problems.append(f"{CLASSIFY_API} must take images: list[PIL.Image.Image] (multipart files)")
    required = c_in.get("required")
    extra = [r for r in (required if isinstance(required, list) else []) if r != "images"]
    if extra:
        problems.append(f"{CLASSIFY_API} must need no input but images, not {extra[:5]}")
    if _schema_type(classify.get("output")) != "array":
        problems.append(f"{CLASSIFY_API} must answer a JSON list (one entry per image)")
    if problems:
        raise WorkloadFailed(
            UNSUPPORTED_BENTO,
            f"service {name!r} does not speak {PROTOCOL}: " + "; ".join(problems),
        )


def bento_requirements(bento_dir: Path, manifest: dict[str, Any] | None = None) -> list[str]:
    """The Python requirements of a Bento (env/python/requirements.txt, else bento.yaml's
    image.python_requirements), one per entry; options (-r, --index-url, -e …) are
    refused: dyff installs nothing."""
    path = bento_dir / "env" / "python" / "requirements.txt"
    if path.is_file():
        if path.stat().st_size > MAX_JSON_BYTES:
            raise WorkloadFailed(UNSUPPORTED_BENTO, "requirements.txt is too large")
        text = path.read_text(errors="replace")
    else:
        image = _object((manifest or {}).get("image"))
        listed = image.get("python_requirements")
        text = listed if isinstance(listed, str) else ""
    out = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise WorkloadFailed(
                MISSING_PACKAGES,
                f"requirements.txt option {line[:80]!r} is not supported: dyff installs no "
                "packages; list only requirements its environment meets",
            )
        out.append(line)
    return out


def unsatisfied(requirements: list[str]) -> list[str]:
    """The requirements dyff's own environment does not meet (a bad line counts as one)."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    missing = []
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            missing.append(f"{line[:80]} (not a requirement)")
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.url:
            missing.append(f"{req.name} (from a URL)")
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{line} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            missing.append(f"{line} (installed: {have})")
    return missing


def bento_digest(bento_dir: Path) -> str:
    """sha256 over the sorted (relative path, file sha256) list of every file in the Bento:
    its content, however it was archived or re-exported."""
    h = hashlib.sha256()
    for name in _walk(bento_dir):
        h.update(f"{_file_sha256(bento_dir / name)}  {name}\n".encode())
    return h.hexdigest()


def pack_bento(bento_dir: Path, out: Path) -> Path:
    """A checked Bento folder as a tar.gz with fixed metadata (sorted names, no owners,
    mtime 0), so what is stored depends on the content only."""
    import gzip
    import tarfile

    with (
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in _walk(bento_dir):
            info = tarfile.TarInfo(name)
            info.size = (bento_dir / name).stat().st_size
            info.mode = 0o644
            with open(bento_dir / name, "rb") as f:
                tar.addfile(info, f)
    return out


def import_bento_archive(archive: Path, workdir: Path, *, load_check: bool = True) -> ImportedBento:
    """Check a Bento archive (.bento, .tar, .tar.gz or .zip of a `bentoml export`).

    dyff's own Bento (`is_dyff_bento`): its model folder `src/model/` is
    validated like the transformers form; its code is never run (ingestion
    repackages the model with the current service). Any other Bento is a
    user's service: its entry service must declare the protocol's APIs
    (`check_protocol_routes`, else UnsupportedBento), dyff's environment must
    meet its requirements (else MissingPackages), and it may not need
    BentoML store models. Its code is not run here.
    """

    workdir = Path(workdir)
    bento_dir = _bento_root(extract_archive(archive, workdir / "bento"))
    manifest = read_manifest(bento_dir)
    _walk(bento_dir)  # refuses links and special files before anything reads them
    if not is_dyff_bento(bento_dir, manifest):
        check_protocol_routes(manifest)
        store_models = bento_dir / "models"
        if manifest.get("models") or (store_models.is_dir() and _walk(store_models)):
            raise WorkloadFailed(
                UNSUPPORTED_BENTO,
                "Bentos with BentoML store models are not supported: include the model "
                "files in the Bento's source (bentofile.yaml include:) instead",
            )
        if not (bento_dir / "src").is_dir():
            raise WorkloadFailed(UNSUPPORTED_BENTO, "the Bento has no source (src/)")
        missing = unsatisfied(bento_requirements(bento_dir, manifest))
        if missing:
            raise WorkloadFailed(
                MISSING_PACKAGES,
                "the service needs Python packages dyff's model server does not have: "
                + ", ".join(missing[:10])
                + "; build the Bento against the packages dyff provides, or submit a "
                "container image (form image)",
            )
        return ImportedBento(
            bento_dir, manifest, None, user_code=True, digest=bento_digest(bento_dir)
        )
    src = bento_dir / "src"
    if manifest.get("models"):
        raise WorkloadFailed(
            UNSUPPORTED_BENTO, "Bentos with BentoML store models are not supported"
        )
    extra_code = [
        f for f in _walk(src) if Path(f).suffix.lower() in CODE_SUFFIXES and f != "service.py"
    ]
    if extra_code:
        raise WorkloadFailed(REMOTE_CODE, f"the Bento carries extra code: {extra_code[:5]}")
    info = validate_transformers_dir(src / "model", load_check=load_check)
    if info.root != src / "model":
        raise WorkloadFailed(MISSING_FILE, "src/model/config.json is missing")
    return ImportedBento(bento_dir, manifest, info, digest=model_digest(info.root, info.files))


# ----------------------------------------------------------------- image form

# Docker's reference grammar (distribution/reference), pinned by a sha256 digest.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]{{1,5}})?)"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
IMAGE_REFERENCE = re.compile(
    rf"^(?P<name>{_NAME})(?::(?P<tag>[\w][\w.-]{{0,127}}))?@sha256:(?P<digest>[a-f0-9]{{64}})$"
)


@dataclass(frozen=True)
class ImageReference:
    name: str
    tag: str | None
    digest: str

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        return f"{self.name}{tag}@sha256:{self.digest}"


def validate_image_reference(ref: str) -> ImageReference:
    """A container image reference pinned by digest (`…@sha256:<64 hex>`), or a refusal."""
    m = IMAGE_REFERENCE.match(ref or "")
    if m is None:
        if "@sha256:" not in (ref or ""):
            msg = f"image {ref!r} must be pinned by digest (name@sha256:<64 hex>)"
        else:
            msg = f"image {ref!r} is not a valid reference (registry/repository[:tag]@sha256:…)"
        raise WorkloadFailed(INVALID_IMAGE, msg)
    if len(m["name"]) > 255:
        raise WorkloadFailed(INVALID_IMAGE, "image name is longer than 255 characters")
    return ImageReference(name=m["name"], tag=m["tag"], digest=m["digest"])


@dataclass(frozen=True)
class ImageSupport:
    """Whether this process can run image-form models, with what, or why not."""

    available: bool
    runtime: str | None
    message: str


def local_image_support() -> ImageSupport:
    """Image-form models need something that runs containers: the Kubernetes cluster the
    workload runs in, or a working Docker/Podman engine on this machine."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return ImageSupport(True, "kubernetes", "running in a Kubernetes cluster")
    for cli in ("docker", "podman"):
        exe = shutil.which(cli)
        if exe is None:
            continue
        try:
            ok = (
                subprocess.run(
                    [exe, "info"], capture_output=True, timeout=10, check=False
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return ImageSupport(True, cli, f"{cli} engine available")
    return ImageSupport(
        False,
        None,
        "image-form models need a container runtime, and this machine has none (no "
        "Kubernetes, no working docker or podman engine); submit the model as a "
        "transformers folder or a Bento archive, or run dyff on Kubernetes",
    )
