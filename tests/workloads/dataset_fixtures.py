"""Test datasets built from scikit-learn's bundled digits (no hub): PNG bytes, HF-layout
Parquet files and ImageFolder archives holding the same images in the same order."""

from __future__ import annotations

import functools
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

DIGIT_NAMES = [str(i) for i in range(10)]
Example = tuple[bytes, int]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@functools.cache
def _digits() -> tuple[Example, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 grey levels scaled to 0..255, upscaled to 16x16 so they look like images.
    images = np.kron(d.images * 15, np.ones((2, 2)))
    return tuple((png(img), int(t)) for img, t in zip(images, d.target, strict=True))


def digits(n: int, start: int = 0) -> list[Example]:
    """n digit images as PNG with their labels, in the bundled order."""
    return list(_digits()[start : start + n])


def by_class(examples: list[Example]) -> list[Example]:
    """The order an ImageFolder of these examples is read in: class, then file name."""
    return sorted(examples, key=lambda e: e[1])


def corrupt(data: bytes) -> bytes:
    """A PNG cut in half: the header identifies it, decoding fails."""
    return data[: len(data) // 2]


def hf_metadata(names: list[str] | None) -> dict[bytes, bytes]:
    label: dict[str, object] = (
        {"names": names, "_type": "ClassLabel"}
        if names is not None
        else {"dtype": "int64", "_type": "Value"}
    )
    features = {"image": {"_type": "Image"}, "label": label}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_parquet(
    path: Path,
    examples: list[Example],
    names: list[str] | None = DIGIT_NAMES,
    *,
    label_as: str = "int",
    row_group_rows: int = 32,
    drop: str | None = None,
) -> Path:
    """A Parquet file in the Hugging Face `datasets` layout."""
    images = pa.array(
        [{"bytes": b, "path": f"{i:05d}.png"} for i, (b, _) in enumerate(examples)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    if label_as == "int":
        labels = pa.array([t for _, t in examples], type=pa.int64())
    else:
        source = names or DIGIT_NAMES
        labels = pa.array([source[t] for _, t in examples], type=pa.string())
    columns = {"image": images, "label": labels}
    if drop:
        del columns[drop]
    table = pa.table(columns).replace_schema_metadata(hf_metadata(names))
    pq.write_table(table, path, row_group_size=row_group_rows)
    return path


def imagefolder_members(
    examples: list[Example], names: list[str] = DIGIT_NAMES
) -> list[tuple[str, bytes]]:
    """(path, bytes) of an ImageFolder holding `examples` (pass them `by_class`)."""
    return [(f"{names[t]}/{i:05d}.png", b) for i, (b, t) in enumerate(examples)]


def write_imagefolder(
    path: Path,
    examples: list[Example],
    names: list[str] = DIGIT_NAMES,
    *,
    fmt: str = "tar.gz",
    wrap: str | None = None,
) -> Path:
    """An ImageFolder archive (`fmt` tar.gz or zip), optionally inside one folder `wrap`."""
    members = imagefolder_members(examples, names)
    prefix = f"{wrap}/" if wrap else ""
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members:
                zf.writestr(prefix + name, data)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for d in sorted({name.split("/")[0] for name, _ in members}):
                info = tarfile.TarInfo(prefix + d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            for name, data in members:
                info = tarfile.TarInfo(prefix + name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


# ------------------------------------------------- the Hugging Face hub layout

# Class names that do not sort alphabetically: their order can only come from the metadata.
WORD_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def hf_feature_dicts(
    image: str, label: str, names: list[str] | None, style: str = "new"
) -> dict[str, object]:
    """`Features.to_dict()` as `datasets` writes it: "new" (2.x and later: no None fields),
    "old" (1.x: `id`, `decode`, `num_classes`, `names_file` beside `_type`)."""
    if style == "old":
        img: dict[str, object] = {"decode": True, "id": None, "_type": "Image"}
        lab: dict[str, object] = (
            {"num_classes": len(names), "names": names, "names_file": None, "id": None}
            if names is not None
            else {"dtype": "int64", "id": None}
        )
    else:
        img, lab = (
            {"_type": "Image"},
            ({"names": names} if names is not None else {"dtype": "int64"}),
        )
    lab["_type"] = "ClassLabel" if names is not None else "Value"
    return {label: lab, image: img}


def write_hf_parquet(
    path: Path,
    examples: list[Example],
    names: list[str] | None = WORD_NAMES,
    *,
    image: str = "img",
    label: str = "digit",
    style: str = "new",
    features: dict[str, object] | None = None,
    row_group_rows: int = 16,
) -> Path:
    """A Parquet file as `datasets` writes it (push_to_hub, to_parquet): the label column
    first, an `img` struct column, a string column `note` beside, and the features in the
    schema's `huggingface` metadata as {"info": {"features": …}}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            label: pa.array([t for _, t in examples], type=pa.int64()),
            image: pa.array(
                [{"bytes": b, "path": None} for b, _ in examples],
                type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "note": pa.array([f"n{i}" for i in range(len(examples))], type=pa.string()),
        }
    )
    declared = features if features is not None else hf_feature_dicts(image, label, names, style)
    meta = {b"huggingface": json.dumps({"info": {"features": declared}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path, row_group_size=row_group_rows)
    return path


def write_hub_folder(
    root: Path, files: dict[str, list[Example]], readme: bool = True, **options: object
) -> Path:
    """A folder in the hub layout: each relative path a Parquet file of its examples
    (written in reverse order, so no file system order can stand in for the names')."""
    for rel, examples in reversed(list(files.items())):
        write_hf_parquet(root / rel, examples, **options)  # type: ignore[arg-type]
    if readme:
        (root / "README.md").write_text("---\nlicense: mit\n---\n# digits\n")
    return root


def pack(root: Path, dest: Path) -> Path:
    """A folder as an archive: .tar.gz as `dyff datasets create --upload FOLDER` packs it,
    or .zip with its members in reverse order."""
    if dest.name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(root.rglob("*"), reverse=True):
                if path.is_file():
                    zf.write(path, path.relative_to(root).as_posix())
        return dest
    from dyff.client import pack_directory

    return pack_directory(root, dest)


# ------------------------------------------------- attributes (issue 12)


def write_archive(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A .tar.gz of (path, bytes) members, folders implied."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_parquet_with_columns(
    path: Path,
    examples: list[Example],
    extra: dict[str, pa.Array],
    extra_features: dict[str, object] | None = None,
    names: list[str] = DIGIT_NAMES,
) -> Path:
    """A Hugging Face Parquet file (image, ClassLabel label) with `extra` columns beside,
    their features declared in the metadata as `extra_features` says."""
    images = pa.array(
        [{"bytes": b, "path": None} for b, _ in examples],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    columns = {"image": images, "label": pa.array([t for _, t in examples], type=pa.int64())}
    columns.update(extra)
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}
    features.update(extra_features or {})  # type: ignore[arg-type]
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(pa.table(columns).replace_schema_metadata(meta), path, row_group_size=16)
    return path
