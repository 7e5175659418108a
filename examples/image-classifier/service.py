"""An image classifier served with BentoML that speaks dyff's protocol image-classification/v1.

Written from BentoML's documented 1.4 API (a `@bentoml.service` class with
`@bentoml.api` methods); it serves a transformers image-classification model
folder found next to this file (`model/`), or at MODEL_DIR. The protocol is in
docs/serving-protocol.md of the dyff repository: two APIs, `metadata` and
`classify_images`.

Safety: weights are loaded from safetensors only, and `trust_remote_code` is
never set, so nothing in the model folder runs as code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml
from PIL import Image

PROTOCOL = "image-classification/v1"
MODEL_DIR = Path(os.environ.get("MODEL_DIR") or Path(__file__).resolve().parent / "model")


@bentoml.service(name="image-classifier", workers=1, traffic={"timeout": 300})
class ImageClassifier:
    def __init__(self) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.torch = torch
        self.model = AutoModelForImageClassification.from_pretrained(
            MODEL_DIR, use_safetensors=True, trust_remote_code=False, local_files_only=True
        ).eval()
        self.processor = AutoImageProcessor.from_pretrained(
            MODEL_DIR, trust_remote_code=False, local_files_only=True
        )
        id2label = self.model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]

    @bentoml.api
    def metadata(self) -> dict[str, Any]:
        """The protocol this service speaks and its labels (index = class id)."""
        return {"protocol": PROTOCOL, "labels": self.labels}

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=60_000)
    def classify_images(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """Every label with its probability, best first, for each image."""
        rgb = [image.convert("RGB") for image in images]
        with self.torch.inference_mode():
            inputs = self.processor(images=rgb, return_tensors="pt")
            probs = self.model(**inputs).logits.softmax(dim=-1)
        out = []
        for row in probs:
            scores, ids = row.sort(descending=True)
            out.append(
                {"labels": [self.labels[i] for i in ids.tolist()], "scores": scores.tolist()}
            )
        return out
