"""Users' own BentoML services, through the real workloads and a real `bentoml serve`.

The service is examples/image-classifier/service.py (written from BentoML's docs,
not from dyff's service), wrapped around the session's tiny trained ViT, built with
`bentoml build` and exported with `bentoml export` — once per variant, per session.
One end-to-end case runs a real `dyff up` and goes through the HTTP API; the others
run the ingest and evaluate workloads over SQLite and a folder of blobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from dyff import layout
from dyff.errors import WorkloadFailed
from dyff.models import import_bento_archive
from dyff.schema import Model, ModelSource, ModelSpec, ObjectMeta, UploadSource
from dyff.workloads.common import WorkloadConfig
from tests.attack.conftest import Up, start_up, stop_up
from tests.workloads.evaluation_fixtures import (
    HELDOUT_ROWS,
    OWNER,
    Platform,
    fresh_account,
    heldout_examples,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "image-classifier"
DIGITS = [str(i) for i in range(10)]
DIRECT_BATCH = 45
# Scores of one image may differ in the last float32 bits with the batch it was computed
# in (the evaluation's batches are not the direct calls'): labels must be equal.
SCORE_TOLERANCE = 1e-5


# ------------------------------------------------------------------ building


def _bentoml(*args: str, cwd: Path, home: Path) -> str:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "bentoml", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def build_example(
    root: Path,
    model_dir: Path,
    name: str,
    *,
    edit: tuple[str, str] | None = None,
    packages: list[str] | None = None,
) -> Path:
    """The example copied next to the model, optionally edited (`edit`: old, new text of
    service.py; extra `packages`), built with `bentoml build` and exported (.bento)."""
    ctx = root / name
    shutil.copytree(EXAMPLE, ctx, ignore=shutil.ignore_patterns("README.md"))
    shutil.copytree(model_dir, ctx / "model")
    if edit is not None:
        source = (ctx / "service.py").read_text()
        assert edit[0] in source
        (ctx / "service.py").write_text(source.replace(edit[0], edit[1]))
    bentofile = (ctx / "bentofile.yaml").read_text().replace("my-image-classifier", name)
    for package in packages or []:
        bentofile = bentofile.replace("    - pillow\n", f"    - pillow\n    - {package}\n")
    (ctx / "bentofile.yaml").write_text(bentofile)
    home = root / "bentoml-home"
    _bentoml("build", ".", cwd=ctx, home=home)
    out = root / f"{name}.bento"
    _bentoml("export", f"{name}:latest", str(out), cwd=ctx, home=home)
    return out


# Service edits (old text, new text) that make the broken variants.
NO_METADATA = ("    @bentoml.api\n    def metadata(", "    def metadata(")
RAISES = ("        import torch\n", "        raise RuntimeError('no GPU in sight, giving up')\n")
# Answers one image (the probe at ingestion); on a real batch it kills its own server
# and hangs: a server that dies mid-run.
DIES = (
    '        rgb = [image.convert("RGB") for image in images]\n',
    "        import os, signal, time\n"
    "        if len(images) > 1:\n"
    "            os.kill(os.getppid(), signal.SIGKILL)\n"
    "            time.sleep(600)\n"
    '        rgb = [image.convert("RGB") for image in images]\n',
)


@pytest.fixture(scope="module")
def bentos(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example as a user builds it, and broken variants (about 2 s a build)."""
    root = tmp_path_factory.mktemp("user-bentos")
    return {
        "good": build_example(root, tiny_model_dir, "digits-service"),
        "no-metadata": build_example(root, tiny_model_dir, "no-metadata", edit=NO_METADATA),
        "raises": build_example(root, tiny_model_dir, "raises", edit=RAISES),
        "needs": build_example(
            root, tiny_model_dir, "needs", packages=["dyff-no-such-package>=1.0"]
        ),
        "dies": build_example(root, tiny_model_dir, "dies", edit=DIES),
    }


# ------------------------------------------------------------------ helpers


def ingest_bento(platform: Platform, account: str, name: str, archive: Path) -> Model:
    """Upload `archive` as a bento-form model and run the real ingest workload on it."""
    from dyff.workloads.ingest_model import run

    data = archive.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    platform.blobs.put(layout.upload_key(account, "Model", name, sha), data)
    source = ModelSource(form="bento", upload=UploadSource(sha256=sha, size_bytes=len(data)))
    platform.records.create(
        Model(metadata=ObjectMeta(name=name, namespace=account), spec=ModelSpec(source=source))
    )
    config: WorkloadConfig = platform.config(account, name)
    with contextlib.suppress(WorkloadFailed):  # the record says why
        run(config)
    return platform.records.get(Model, account, name)


def refusal(model: Model) -> tuple[str, str]:
    ready = model.status.condition("Ready")
    assert model.status.phase == "Failed" and ready is not None and ready.status == "False"
    return ready.reason, ready.message


def predictions(platform: Platform, account: str, name: str) -> pl.DataFrame:
    """Every prediction row of an evaluation, from its manifest's files, by row id."""
    files = [io.BytesIO(platform.blobs.get(k)) for k in platform.manifest(account, name)]
    return pl.concat([pl.read_parquet(f) for f in files]).sort("row_id")


def direct_answers(archive: Path, images: list[bytes], home: Path) -> list[dict[str, object]]:
    """What the service itself answers for the image files (sent as a client would,
    DIRECT_BATCH files a request)."""
    from dyff.runtime.serve import serve_bento

    out = []
    with serve_bento(archive, bentoml_home=home, user_code=True) as url:
        for start in range(0, len(images), DIRECT_BATCH):
            batch = images[start : start + DIRECT_BATCH]
            files = [("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(batch)]
            r = httpx.post(f"{url}/classify_images", files=files, timeout=60)
            assert r.status_code == 200, r.text
            out.extend(r.json())
    return out


@pytest.fixture(scope="module")
def mine(platform: Platform, bentos: dict[str, Path]) -> Model:
    """The example ingested once (in an account of its own) by the real workload."""
    return ingest_bento(platform, fresh_account(), "mine", bentos["good"])


# ------------------------------------------------------------------ ingestion


def test_user_bento_is_accepted_with_its_own_code(
    platform: Platform, mine: Model, tmp_path: Path
) -> None:
    account, model = mine.account, mine
    assert model.status.phase == "Ready", model.status
    assert model.status.user_code is True
    # Labels come from the service's own /metadata, read by serving it once.
    assert model.status.labels == DIGITS
    ready = model.status.condition("Ready")
    assert ready is not None and ready.reason == "UserService"
    # What is stored is the user's service, unchanged: not dyff's service.py.
    assert model.status.digest is not None
    stored = platform.blobs.download(
        layout.bento_key(account, model.status.digest), tmp_path / "stored.bento"
    )
    imported = import_bento_archive(stored, tmp_path / "check")
    assert imported.user_code and imported.digest == model.status.digest
    assert (imported.bento_dir / "src" / "service.py").read_bytes() == (
        EXAMPLE / "service.py"
    ).read_bytes()


def test_same_bento_twice_is_one_digest(
    platform: Platform, bentos: dict[str, Path], mine: Model, tmp_path: Path
) -> None:
    """Uploaded again, re-archived with other bytes (tar.gz in a folder instead of
    BentoML's tar.xz): one model digest, one stored Bento."""
    account = mine.account
    unpacked = import_bento_archive(bentos["good"], tmp_path / "x").bento_dir
    again = tmp_path / "again.tar.gz"
    with tarfile.open(again, "w:gz") as tar:
        tar.add(unpacked, arcname="digits-service")
    assert again.read_bytes() != bentos["good"].read_bytes()
    second = ingest_bento(platform, account, "twice", again)
    assert mine.status.phase == second.status.phase == "Ready"
    assert mine.status.digest == second.status.digest
    ready = second.status.condition("Ready")
    assert ready is not None and "same as the stored" in ready.message
    stored = [b.key for b in platform.blobs.list(f"accounts/{account}/bentos/")]
    assert stored == [layout.bento_key(account, mine.status.digest or "")]


def test_bento_missing_a_protocol_api_is_refused(
    platform: Platform, bentos: dict[str, Path]
) -> None:
    model = ingest_bento(platform, fresh_account(), "partial", bentos["no-metadata"])
    reason, message = refusal(model)
    assert reason == "UnsupportedBento"
    assert "lacks the API metadata" in message and "image-classification/v1" in message
    assert model.status.user_code is False and model.status.digest is None


def test_bento_with_an_unmet_requirement_is_refused(
    platform: Platform, bentos: dict[str, Path]
) -> None:
    model = ingest_bento(platform, fresh_account(), "needy", bentos["needs"])
    reason, message = refusal(model)
    assert reason == "MissingPackages"
    assert "dyff-no-such-package>=1.0 (not installed)" in message


def test_service_that_raises_at_start_up_fails_fast_with_its_log(
    platform: Platform, bentos: dict[str, Path]
) -> None:
    started = time.monotonic()
    model = ingest_bento(platform, fresh_account(), "raises", bentos["raises"])
    elapsed = time.monotonic() - started
    reason, message = refusal(model)
    assert reason == "ModelServerFailed"
    assert "no GPU in sight, giving up" in message  # the tail of its own log
    assert elapsed < 60, elapsed
    # No path of this machine in what the user sees.
    assert str(platform.root) not in message and sys.prefix not in message
    assert "/tmp/" not in message


# ------------------------------------------------------------------ evaluation


def test_user_service_is_evaluated_through_protocol_v1(
    platform: Platform, bentos: dict[str, Path], mine: Model, tmp_path: Path
) -> None:
    """Predictions, row by row, are what the service answers when called directly on the
    same image files; metrics are computed as for dyff's own models."""
    from dyff.workloads.evaluate import run_evaluation

    account = mine.account
    platform.order(account, "ev", model="mine", model_owner=account, top_k=3)
    out = run_evaluation(platform.records, platform.blobs, account, "ev")
    assert out is not None and out.images == HELDOUT_ROWS
    ev = platform.evaluation(account, "ev")
    assert ev.status.phase == "Complete", ev.status
    assert ev.status.metrics is not None and (ev.status.metrics.accuracy or 0) > 0.8

    frame = predictions(platform, account, "ev")
    examples = heldout_examples()
    direct = direct_answers(bentos["good"], [png for png, _ in examples], tmp_path / "home")
    for row, answer, (_, label) in zip(frame.iter_rows(named=True), direct, examples, strict=True):
        assert row["label"] == label
        assert [DIGITS[i] for i in row["topk_labels"]] == answer["labels"][:3]
        assert row["topk_scores"] == pytest.approx(
            np.float32(answer["scores"][:3]).tolist(), abs=SCORE_TOLERANCE
        )

    # Ordered again: everything is reused, nothing is served.
    platform.order(account, "ev2", model="mine", model_owner=account, top_k=3)
    again = run_evaluation(platform.records, platform.blobs, account, "ev2")
    assert again is not None and again.inference_calls == 0


def test_user_service_never_reuses_dyffs_predictions(platform: Platform, mine: Model) -> None:
    """Same settings, same dataset: the reuse keys of a user's service and of dyff's own
    model differ in the model digest and in the inference digest."""
    from dyff.evaluation import resolve

    account = mine.account
    ours = platform.order(account, "ours", model="digits-vit", model_owner=OWNER)
    theirs = platform.order(account, "theirs", model="mine", model_owner=account)
    a, b = (
        resolve(platform.records, platform.blobs, ours),
        resolve(platform.records, platform.blobs, theirs),
    )
    assert a.model_digest != b.model_digest
    assert a.inference_digest != b.inference_digest


def test_labels_unknown_at_ingestion_are_read_when_evaluating(
    platform: Platform, bentos: dict[str, Path]
) -> None:
    """On Kubernetes ingestion never runs user code, so labels stay None; the evaluation
    reads them from /metadata and matches them to the dataset's then."""
    from dyff.workloads.evaluate import run_evaluation

    account = fresh_account()
    ingest_bento(platform, account, "mine", bentos["good"])

    def forget(m: Model) -> None:
        m.status.labels = None

    platform.records.mutate(Model, account, "mine", forget)
    platform.order(account, "ev", model="mine", model_owner=account)
    out = run_evaluation(platform.records, platform.blobs, account, "ev")
    assert out is not None and out.images == HELDOUT_ROWS
    st = platform.evaluation(account, "ev").status
    assert st.phase == "Complete" and st.metrics is not None
    assert (st.metrics.accuracy or 0) > 0.8


@pytest.mark.slow
def test_server_dying_mid_run_fails_the_evaluation_in_seconds(
    platform: Platform, bentos: dict[str, Path]
) -> None:
    from dyff.workloads.evaluate import run_evaluation

    account = fresh_account()
    model = ingest_bento(platform, account, "dies", bentos["dies"])
    assert model.status.phase == "Ready", model.status  # /metadata is fine; classify is not

    # The probe at ingestion already killed one server: this one dies on its first batch.
    platform.order(account, "ev", model="dies", model_owner=account)
    started = time.monotonic()
    with pytest.raises(WorkloadFailed) as err:
        run_evaluation(platform.records, platform.blobs, account, "ev")
    elapsed = time.monotonic() - started
    assert err.value.reason == "ModelServerFailed"
    assert "exited with code" in err.value.message
    assert elapsed < 60, elapsed  # request timeouts are 600 s
    assert platform.evaluation(account, "ev").status.phase == "Failed"


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    target = start_up(tmp_path_factory.mktemp("user-services-up"))
    yield target
    stop_up(target)


@pytest.mark.slow
def test_user_bento_through_dyff_up(up: Up, bentos: dict[str, Path], tmp_path: Path) -> None:
    """Built and exported by a user, uploaded through the HTTP API of a real `dyff up`:
    Ready with the service's labels, evaluated, predictions equal to direct calls."""
    from dyff.client import Client, ClientConfig
    from tests.workloads.dataset_fixtures import write_parquet

    examples = heldout_examples()[:60]
    data = write_parquet(tmp_path / "digits.parquet", examples)
    config = ClientConfig(server=up.url, api_key=up.key)
    with Client(config) as c:
        c.register_upload("datasets", "digits", "parquet", data, extra_spec={"shardRows": 20})
        c.register_upload("models", "mine", "bento", bentos["good"])
        model = c.wait("models", "mine", timeout=300)
        assert model["status"]["phase"] == "Ready", model["status"]
        assert model["status"]["userCode"] is True
        assert model["status"]["labels"] == DIGITS
        c.wait("datasets", "digits", timeout=300)
        c.order("mine", "digits", name="ev", top_k=2)
        ev = c.wait("evaluations", "ev", timeout=600)
        assert ev["status"]["phase"] == "Complete", ev["status"]
        rows = c.predictions("ev", limit=1000)["rows"]
    direct = direct_answers(bentos["good"], [png for png, _ in examples], tmp_path / "home")
    assert len(rows) == len(examples)
    for row, answer in zip(sorted(rows, key=lambda r: r["row_id"]), direct, strict=True):
        assert [DIGITS[i] for i in row["topk_labels"]] == answer["labels"][:2]
        assert row["topk_scores"] == pytest.approx(answer["scores"][:2], abs=SCORE_TOLERANCE)
