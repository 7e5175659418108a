"""Tiny models, model validation and digests, Bento import, and the image form."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any, Literal

import pytest

from dyff import models
from dyff.errors import WorkloadFailed
from dyff.models import (
    ModelInfo,
    import_bento_archive,
    local_image_support,
    model_digest,
    unpack_bento,
    validate_image_reference,
    validate_transformers_dir,
)
from dyff.tinymodels import accuracy, digits_png, digits_splits

DIGEST = "a" * 64


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def edit_config(model_dir: Path, change: Any) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def refusal(path: Path) -> WorkloadFailed:
    with pytest.raises(WorkloadFailed) as info:
        validate_transformers_dir(path)
    return info.value


# ------------------------------------------------------------------ tiny models


def test_digits_splits_are_rgb_uint8_and_stratified() -> None:
    train, test = digits_splits()
    assert train.images.dtype.name == "uint8" and train.images.shape[1:] == (8, 8, 3)
    assert train.images.max() == 255 and train.images.min() == 0
    assert len(train.labels) + len(test.labels) == 1797
    assert sorted(set(test.labels.tolist())) == list(range(10))
    pngs = digits_png(test.images[:3])
    assert all(p.startswith(b"\x89PNG") for p in pngs)


def test_tiny_vit_reaches_held_out_accuracy(tiny_model_dir: Path, digits_test: Any) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["ViTForImageClassification"]
    assert config["image_size"] == 8
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert not list(tiny_model_dir.glob("*.bin"))
    assert accuracy(tiny_model_dir, digits_test) > 0.9


def test_random_vit_small_has_vit_small_shape(tmp_path: Path) -> None:
    from dyff.tinymodels import random_vit_small

    out = random_vit_small(tmp_path / "vits")
    config = json.loads((out / "config.json").read_text())
    assert (config["image_size"], config["patch_size"], config["hidden_size"]) == (224, 16, 384)
    assert (config["num_hidden_layers"], config["num_attention_heads"]) == (12, 6)
    assert config["intermediate_size"] == 1536 and len(config["id2label"]) == 10
    info = validate_transformers_dir(out, load_check=False)
    assert info.image_size == (224, 224)
    # ~21.7M parameters in float32.
    assert 80e6 < (out / "model.safetensors").stat().st_size < 95e6


# ------------------------------------------------------------------- validation


def test_valid_model_info(tiny_model_dir: Path) -> None:
    info = validate_transformers_dir(tiny_model_dir)
    assert isinstance(info, ModelInfo)
    assert info.architecture == "ViTForImageClassification"
    assert info.model_type == "vit"
    assert info.labels == [str(i) for i in range(10)]
    assert info.files == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert info.image_size == (8, 8)
    assert info.size_bytes > 70_000


def test_pickle_weights_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    m = copy_model(tiny_model_dir, tmp_path / "m")
    torch.save({"w": torch.zeros(2)}, m / "pytorch_model.bin")  # a real pickle, never loaded
    exc = refusal(m)
    assert exc.reason == "PickleWeights"
    assert "pickle weights are refused" in exc.message
    assert "safetensors" in exc.message


@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "last.ckpt", "sub/model.pkl"])
def test_every_pickle_suffix_refused(tiny_model_dir: Path, tmp_path: Path, name: str) -> None:
    m = copy_model(tiny_model_dir, tmp_path / "m")
    (m / name).parent.mkdir(exist_ok=True)
    (m / name).write_bytes(b"\x80\x04K\x01.")
    assert refusal(m).reason == "PickleWeights"


def test_auto_map_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    m = copy_model(tiny_model_dir, tmp_path / "m")
    edit_config(m, lambda c: c.update(auto_map={"AutoConfig": "evil.EvilConfig"}))
    exc = refusal(m)
    assert exc.reason == "RemoteCode"
    assert "trust_remote_code" in exc.message


def test_custom_code_file_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    m = copy_model(tiny_model_dir, tmp_path / "m")
    (m / "modeling_evil.py").write_text("import os\nos.system('true')\n")
    assert refusal(m).reason == "RemoteCode"


@pytest.mark.parametrize(
    "arch", ["ViTForMaskedImageModeling", "EvilForImageClassification", "ViTModel"]
)
def test_wrong_architecture_refused(tiny_model_dir: Path, tmp_path: Path, arch: str) -> None:
    m = copy_model(tiny_model_dir, tmp_path / "m")
    edit_config(m, lambda c: c.update(architectures=[arch]))
    exc = refusal(m)
    assert exc.reason == "UnsupportedArchitecture"
    assert arch in exc.message


def test_missing_id2label_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    m = copy_model(tiny_model_dir, tmp_path / "m")
    edit_config(m, lambda c: (c.pop("id2label"), c.pop("label2id")))
    exc = refusal(m)
    assert exc.reason == "MissingLabels"
    assert "id2label" in exc.message


def test_gappy_id2label_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    m = copy_model(tiny_model_dir, tmp_path / "m")
    edit_config(m, lambda c: c.update(id2label={"0": "a", "2": "b"}))
    assert refusal(m).reason == "MissingLabels"


@pytest.mark.parametrize(
    ("remove", "word"),
    [("preprocessor_config.json", "preprocessor"), ("model.safetensors", "safetensors"),
     ("config.json", "config")],
)  # fmt: skip
def test_missing_files_refused(
    tiny_model_dir: Path, tmp_path: Path, remove: str, word: str
) -> None:
    m = copy_model(tiny_model_dir, tmp_path / "m")
    (m / remove).unlink()
    exc = refusal(m)
    assert exc.reason == "MissingFile"
    assert word in exc.message


def test_pickle_renamed_to_safetensors_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    m = copy_model(tiny_model_dir, tmp_path / "m")
    torch.save({"w": torch.zeros(2)}, m / "model.safetensors")
    assert refusal(m).reason == "BadWeights"


def test_weights_of_another_shape_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    m = copy_model(tiny_model_dir, tmp_path / "m")
    edit_config(m, lambda c: c.update(hidden_size=48, intermediate_size=96))
    exc = refusal(m)
    assert exc.reason == "BadWeights"


def test_symlink_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    m = copy_model(tiny_model_dir, tmp_path / "m")
    (m / "extra.json").symlink_to("/etc/passwd")
    assert refusal(m).reason == "UnsupportedFile"


# ----------------------------------------------------------------------- digest


def test_digest_is_content_identity(tiny_model_dir: Path, tmp_path: Path) -> None:
    d0 = model_digest(tiny_model_dir)
    # The same files elsewhere, wrapped in a folder, with a README: the same model.
    wrapped = copy_model(tiny_model_dir, tmp_path / "outer" / "my-model")
    (wrapped / "README.md").write_text("# my model\n")
    (tmp_path / "outer" / "__MACOSX").mkdir()  # what macOS's zip adds beside the folder
    assert validate_transformers_dir(tmp_path / "outer", load_check=False).root == wrapped
    assert model_digest(tmp_path / "outer") == d0
    # One changed label: another model.
    changed = copy_model(tiny_model_dir, tmp_path / "changed")
    edit_config(changed, lambda c: c["id2label"].update({"9": "nine"}))
    assert model_digest(changed) != d0
    assert re.fullmatch(r"[0-9a-f]{64}", d0)


# --------------------------------------------------------------------- bentos


def test_bento_archive_round_trip(tiny_model_dir: Path, tiny_bento: Path, tmp_path: Path) -> None:
    with tarfile.open(tiny_bento) as tar:
        names = tar.getnames()
    assert any(n.endswith("bento.yaml") for n in names)
    assert any(n.endswith("src/model/model.safetensors") for n in names)
    assert any(n.endswith("src/service.py") for n in names)
    imported = import_bento_archive(tiny_bento, tmp_path)
    assert imported.manifest["service"] == "service:ImageClassifier"
    assert imported.manifest["labels"]["dyff.io/digest"] == model_digest(tiny_model_dir)
    assert imported.info.labels == [str(i) for i in range(10)]
    assert model_digest(imported.info.root) == model_digest(tiny_model_dir)


def _rebundle(bento_dir: Path, out: Path, mode: Literal["w:gz", "w:xz"] = "w:gz") -> Path:
    with tarfile.open(out, mode) as tar:
        tar.add(bento_dir, arcname=".")
    return out


def test_bentoml_default_xz_export_accepted(tiny_bento: Path, tmp_path: Path) -> None:
    first = import_bento_archive(tiny_bento, tmp_path / "a", load_check=False)
    xz = _rebundle(first.bento_dir, tmp_path / "x.bento", "w:xz")
    again = import_bento_archive(xz, tmp_path / "b", load_check=False)
    assert model_digest(again.info.root) == model_digest(first.info.root)


def test_foreign_bento_service_without_the_protocol_refused(
    tiny_bento: Path, tmp_path: Path
) -> None:
    """A Bento of another service is the user's own; lacking a v1 API, it is refused with
    the API named."""
    import yaml

    first = import_bento_archive(tiny_bento, tmp_path / "a", load_check=False)
    manifest = yaml.safe_load((first.bento_dir / "bento.yaml").read_text())
    manifest["service"] = "mine:Evil"
    manifest["entry_service"] = "evil"
    manifest["schema"]["routes"] = [
        r for r in manifest["schema"]["routes"] if r["name"] != "classify_images"
    ]
    (first.bento_dir / "bento.yaml").write_text(yaml.safe_dump(manifest))
    archive = _rebundle(first.bento_dir, tmp_path / "evil.tar.gz")
    with pytest.raises(WorkloadFailed) as info:
        import_bento_archive(archive, tmp_path / "b")
    assert info.value.reason == "UnsupportedBento"
    assert "lacks the API classify_images" in info.value.message
    assert "image-classification/v1" in info.value.message


def test_edited_copy_of_dyffs_service_is_user_code(tiny_bento: Path, tmp_path: Path) -> None:
    """dyff's layout with a service.py that is not byte for byte dyff's: the user's code,
    kept as it is (never replaced by dyff's service when served)."""
    first = import_bento_archive(tiny_bento, tmp_path / "a", load_check=False)
    assert not first.user_code and first.info is not None
    service = first.bento_dir / "src" / "service.py"
    service.write_text(service.read_text() + "\n# mine\n")
    archive = _rebundle(first.bento_dir, tmp_path / "edited.tar.gz")
    again = import_bento_archive(archive, tmp_path / "b")
    assert again.user_code and again.info is None
    assert again.digest != first.digest
    served = unpack_bento(archive, tmp_path / "served", user_code=True)
    assert (served / "src" / "service.py").read_text().endswith("# mine\n")


def test_bento_with_pickle_model_refused(tiny_bento: Path, tmp_path: Path) -> None:
    first = import_bento_archive(tiny_bento, tmp_path / "a", load_check=False)
    (first.bento_dir / "src" / "model" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    archive = _rebundle(first.bento_dir, tmp_path / "p.tar.gz")
    with pytest.raises(WorkloadFailed) as info:
        import_bento_archive(archive, tmp_path / "b")
    assert info.value.reason == "PickleWeights"


def test_garbage_and_non_bento_archives_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bento"
    garbage.write_bytes(b"this is not an archive at all" * 10)
    with pytest.raises(WorkloadFailed) as info:
        import_bento_archive(garbage, tmp_path / "a")
    assert info.value.reason == "BadArchive"

    plain = tmp_path / "plain.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        data = b"hello"
        member = tarfile.TarInfo("hello.txt")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with pytest.raises(WorkloadFailed) as info:
        import_bento_archive(plain, tmp_path / "b")
    assert info.value.reason == "UnsupportedBento"
    assert "bento.yaml" in info.value.message


def test_bento_with_path_traversal_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        member = tarfile.TarInfo("../../escape.txt")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    with pytest.raises(WorkloadFailed) as info:
        import_bento_archive(evil, tmp_path / "a")
    assert info.value.reason == "UnsafeArchive"
    assert not (tmp_path.parent / "escape.txt").exists()


# ------------------------------------------------------------------ image form


@pytest.mark.parametrize(
    "ref",
    [
        f"registry.example.com:5000/team/model@sha256:{DIGEST}",
        f"ghcr.io/org/sub/model-server:v1.2@sha256:{DIGEST}",
        f"localhost/model@sha256:{DIGEST}",
        f"model_server@sha256:{DIGEST}",
    ],
)
def test_valid_image_references(ref: str) -> None:
    image = validate_image_reference(ref)
    assert image.digest == DIGEST
    assert str(image) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "registry.example.com/team/model:latest",  # not pinned
        f"registry.example.com/Team/model@sha256:{DIGEST}",  # upper-case repository
        "registry.example.com/team/model@sha256:abc",  # short digest
        f"registry.example.com/team/model@sha256:{'A' * 64}",  # upper-case digest
        f"registry.example.com/../model@sha256:{DIGEST}",
        f"registry.example.com/team model@sha256:{DIGEST}",
        f"-bad/model@sha256:{DIGEST}",
        f"registry.example.com/team/model@sha512:{'a' * 128}",
        "",
    ],
)
def test_invalid_image_references(ref: str) -> None:
    with pytest.raises(WorkloadFailed) as info:
        validate_image_reference(ref)
    assert info.value.reason == "InvalidImageReference"


def test_local_image_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    support = local_image_support()
    assert support.available == (support.runtime is not None)
    if not support.available:
        assert "container runtime" in support.message
    if shutil.which("docker") is None and shutil.which("podman") is None:
        assert not support.available
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert local_image_support().runtime == "kubernetes"


def test_reasons_are_condition_reasons() -> None:
    from dyff.schema import Condition

    for reason in (
        models.PICKLE_WEIGHTS, models.REMOTE_CODE, models.UNSUPPORTED_ARCHITECTURE,
        models.UNSUPPORTED_WEIGHTS, models.MISSING_LABELS, models.MISSING_FILE,
        models.BAD_CONFIG, models.BAD_WEIGHTS, models.UNSUPPORTED_FILE,
        models.UNSUPPORTED_BENTO, models.INVALID_IMAGE, models.CONTAINER_RUNTIME_UNAVAILABLE,
    ):  # fmt: skip
        # Condition validates the reason against the API conventions' pattern.
        assert Condition(type="Ready", status="False", reason=reason).reason == reason
    with pytest.raises(ValueError):
        Condition(type="Ready", status="False", reason="not a reason")


# ------------------------------------------------------- the service's model code


def test_classifier_fast_preprocessing_matches_the_hf_processor(
    tiny_model_dir: Path, digits_test: Any, tmp_path: Path
) -> None:
    """A resize-only processor is done on whole batches (PIL resize per image as the
    processor does it, the rest in torch); the model's own processor must give the same
    top-k and scores, at the model's size and when resizing. A processor it does not
    cover falls back to the processor itself."""
    import numpy as np
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from dyff.runtime.service import Classifier

    fast = Classifier(tiny_model_dir, top_k=3, threads=1)
    assert fast.resize is not None
    assert fast.metadata()["device"] == "cpu"
    assert fast.metadata()["resize"] == {"height": 8, "width": 8, "resample": 2}
    model = AutoModelForImageClassification.from_pretrained(tiny_model_dir)
    processor = AutoImageProcessor.from_pretrained(tiny_model_dir)

    def reference(images: Any) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
            probs = model(pixel_values=pixels).logits.softmax(-1)
            scores, indices = probs.topk(3, dim=-1)
            return indices.numpy(), scores.numpy()

    images = digits_test.images[:200]
    big = np.kron(images, np.ones((3, 3, 1), dtype=np.uint8))  # 24x24, resized by both
    for batch in (images, big, [big[0], images[1], big[2]]):
        got = fast.predict(batch)
        indices, scores = reference(batch)
        np.testing.assert_array_equal(got["index"], indices)
        np.testing.assert_allclose(got["score"], scores, atol=1e-5)

    # A processor the fast path does not cover (a centre crop) goes through the processor.
    other = copy_model(tiny_model_dir, tmp_path / "crop")
    pre = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(
        json.dumps({**pre, "do_center_crop": True, "crop_size": {"height": 8, "width": 8}})
    )
    slow = Classifier(other, top_k=3, threads=1)
    assert slow.resize is None and slow.metadata()["resize"] is None
    a, b = slow.predict(images), fast.predict(images)
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-5)
