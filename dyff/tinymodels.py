"""Real, tiny image-classification models built without any hub access.

Tests and benchmarks need actual transformers models, but nothing may be
downloaded at run time (`HF_HUB_OFFLINE=1`). scikit-learn ships the 8x8
handwritten digits, and a ~18k-parameter ViT learns them to >0.9 held-out
accuracy in seconds on two cores; `random_vit_small` gives the ViT-Small
shape (untrained) for throughput measurements.
"""

from __future__ import annotations

import io
import time
import typing as t
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 0
DIGIT_LABELS = [str(i) for i in range(10)]
# Stop training once the validation split (carved from train) reaches this...
TARGET_ACCURACY = 0.96
# ...or, past the time budget, once it reaches this (a loaded machine still gets a good model).
FLOOR_ACCURACY = 0.93
MAX_EPOCHS = 80


@dataclass(frozen=True)
class Split:
    """Images as RGB uint8 (N, H, W, 3) and their integer labels."""

    images: np.ndarray
    labels: np.ndarray


def digits_splits(seed: int = SEED, test_fraction: float = 0.25) -> tuple[Split, Split]:
    """The scikit-learn digits as RGB uint8 images (values scaled 0..16 -> 0..255), stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    gray = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        rgb, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return Split(np.ascontiguousarray(x_tr), y_tr), Split(np.ascontiguousarray(x_te), y_te)


def digits_png(images: np.ndarray) -> list[bytes]:
    """Each (H, W, 3) uint8 image as PNG bytes."""
    from PIL import Image

    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _image_processor(size: int) -> object:
    # The PIL-backed processor: torchvision is not a dependency. It saves as
    # `ViTImageProcessor`, so AutoImageProcessor loads it anywhere.
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def to_pixel_values(images: np.ndarray) -> object:
    """(N, H, W, 3) uint8 -> normalised (N, 3, H, W) float tensor, as the saved processor does
    for images already at the model's size."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.5


def _labels() -> tuple[dict[int, str], dict[str, int]]:
    id2label = dict(enumerate(DIGIT_LABELS))
    return id2label, {v: k for k, v in id2label.items()}


def train_tiny_vit(
    out_dir: Path, seconds_budget: float = 30.0, seed: int = SEED, threads: int = 1
) -> Path:
    """Train a ~18k-parameter ViT on the digits train split and save it (safetensors).

    Training is seeded and stops on a validation split carved from train (the
    held-out test split is never looked at): at TARGET_ACCURACY (~15 s on two
    idle cores), or past `seconds_budget` at FLOOR_ACCURACY, or after
    MAX_EPOCHS. The time budget never cuts training short of the floor, so a
    busy machine gets a slower, not a worse, model. One thread by default: the
    tensors are tiny, and on a shared 2-core machine two threads ran 3x slower.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(out_dir, seconds_budget, seed)
    finally:
        torch.set_num_threads(previous)  # a global setting: leave it as it was


def _train(out_dir: Path, seconds_budget: float, seed: int) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    train, _ = digits_splits(seed)
    n_val = len(train.labels) // 10
    x_all = to_pixel_values(train.images)
    y_all = torch.from_numpy(train.labels)
    assert isinstance(x_all, torch.Tensor)
    x_val, y_val = x_all[:n_val], y_all[:n_val]
    x_tr, y_tr = x_all[n_val:], y_all[n_val:]

    id2label, label2id = _labels()
    config = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label=id2label,
        label2id=label2id,
    )
    model = ViTForImageClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    for _epoch in range(MAX_EPOCHS):
        model.train()
        perm = torch.randperm(len(y_tr), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = model(pixel_values=x_tr[idx], labels=y_tr[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(pixel_values=x_val).logits.argmax(-1) == y_val).float().mean().item()
        late = time.monotonic() - start > seconds_budget
        if acc >= TARGET_ACCURACY or (late and acc >= FLOOR_ACCURACY):
            break
    return _save(model, _image_processor(8), out_dir)


def untrained_tiny_vit(out_dir: Path, labels: Sequence[str] = DIGIT_LABELS) -> Path:
    """The demo's tiny ViT architecture (`train_tiny_vit`), seeded but untrained, with
    `labels`: for benchmarks, where only the cost of a forward pass matters."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8, patch_size=2, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, id2label=dict(enumerate(labels)),
        label2id={v: i for i, v in enumerate(labels)},
    )  # fmt: skip
    return _save(ViTForImageClassification(config), _image_processor(8), out_dir)


def random_vit_small(out_dir: Path, seed: int = SEED) -> Path:
    """ViT-Small dimensions (224px, patch 16, 384 hidden, 12 layers, 6 heads), random weights."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    id2label, label2id = _labels()
    config = ViTConfig(
        image_size=224,
        patch_size=16,
        num_channels=3,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        id2label=id2label,
        label2id=label2id,
    )
    model = ViTForImageClassification(config)
    return _save(model, _image_processor(224), out_dir)


def _save(model: object, processor: object, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()  # type: ignore[attr-defined]
    model.save_pretrained(out_dir, safe_serialization=True)  # type: ignore[attr-defined]
    processor.save_pretrained(out_dir)  # type: ignore[attr-defined]
    return out_dir


def accuracy(model_dir: Path, split: Split) -> float:
    """Top-1 accuracy of a saved model on a split, by a bare in-process forward pass."""
    import torch
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(
        model_dir, trust_remote_code=False, use_safetensors=True
    )
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=to_pixel_values(split.images)).logits
    return float((logits.argmax(-1).numpy() == split.labels).mean())


# ------------------------------------------------ processor families (random weights)

# Tiny models of the architectures and image processors people use, each saved as a
# user would (safetensors + preprocessor_config.json), for checking that dyff's
# predictions equal plain transformers' on images of every size and mode.
FAMILY_LABELS = ["owl", "cat", "fox", "eel"]  # not in sorted order: names, not positions


def _family(name: str) -> tuple[object, object]:
    """(config, processor) of one processor family."""
    import transformers as tf
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
    from transformers.models.convnext.image_processing_pil_convnext import (
        ConvNextImageProcessorPil,
    )
    from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil
    from transformers.models.mobilenet_v2.image_processing_pil_mobilenet_v2 import (
        MobileNetV2ImageProcessorPil,
    )
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    id2label = dict(enumerate(FAMILY_LABELS))
    labels: dict[str, t.Any] = {
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
    }
    if name == "vit":  # resize to a fixed size (bilinear): the client-resize path
        return (
            tf.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64, **labels),
            ViTImageProcessorPil(size={"height": 16, "width": 16}),
        )  # fmt: skip
    if name == "swin_bicubic":  # the same rule with bicubic resampling
        return (
            tf.SwinConfig(image_size=16, patch_size=2, embed_dim=8, depths=[1, 1],
                          num_heads=[1, 2], window_size=2, **labels),
            ViTImageProcessorPil(size={"height": 16, "width": 16}, resample=3,
                                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
        )  # fmt: skip
    if name == "convnext_crop":  # shortest edge to size/crop_pct, then a centre crop
        return (
            tf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], **labels),
            ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875),
        )
    if name == "deit_crop":  # resize to a fixed size, then a centre crop (BEiT/DeiT style)
        return (
            tf.DeiTConfig(image_size=24, patch_size=4, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64,
                          architectures=["DeiTForImageClassification"], **labels),
            DeiTImageProcessorPil(size={"height": 28, "width": 28},
                                  crop_size={"height": 24, "width": 24}),
        )  # fmt: skip
    if name == "resnet_shortest_edge":  # shortest edge, centre crop (BiT/DINOv2 style)
        return (
            tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                            layer_type="basic", **labels),
            BitImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 24, "width": 24}),
        )  # fmt: skip
    if name == "mobilenet_no_resize":  # do_resize=False: images go in at their own size
        return (
            tf.MobileNetV2Config(image_size=32, depth_multiplier=0.35, **labels),
            MobileNetV2ImageProcessorPil(do_resize=False, do_center_crop=False),
        )
    raise ValueError(f"unknown family {name!r}")


FAMILIES = (
    "vit", "swin_bicubic", "convnext_crop", "deit_crop", "resnet_shortest_edge",
    "mobilenet_no_resize",
)  # fmt: skip


def random_family_model(name: str, out_dir: Path, seed: int = SEED) -> Path:
    """A tiny random-weight model of one family, saved with safetensors. Weight matrices
    are drawn with He initialisation (some architectures start with a zero or tiny head),
    so that the classes' scores are far apart: equality of top-k is then a property of
    the computation, not of rounding."""
    import torch
    from transformers import AutoModelForImageClassification

    config, processor = _family(name)
    torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                torch.nn.init.kaiming_normal_(p)
    return _save(model, processor, out_dir)
