"""dyff's own model run inside the evaluate workload: `dyff up`'s cold path.

A cold evaluation (no warm server for its model) would pay for `bentoml serve`: a new
interpreter importing BentoML, torch and transformers, then its API server and its worker,
5-6 s here before the first image. For dyff's own Bentos, all a server does with a
request to `/classify` is `service.Classifier.predict` on the request's images. This runs
that very code — the current `service.py`, which every dyff Bento is served with
(`models.unpack_bento`) — on the same batches, one at a time as the server's single worker
does, with the server's torch threads and chunk size: the same computation without the
process. `dyff up`'s spare workload has torch, transformers and the service imported
already (`preload`).

Only dyff's own code runs here: a user's service is always served in a process of its own.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from dyff.runtime.client import Images, TopK, topk_of

# Set to 1 by `dyff up` for its workloads (0 in its own environment turns it off): a cold
# evaluation of dyff's own model runs it in the workload's process.
IN_PROCESS_ENV = "DYFF_IN_PROCESS"


def preload() -> None:
    """Import what running a model takes (torch, transformers, the service), so that a
    spare workload pays for it before it has work."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: F401

    import dyff.runtime.service  # noqa: F401


class InProcessModel:
    """The model of an unpacked dyff Bento (`bento_dir`), answering as its server's
    `/metadata` and `/classify` do (the client's `metadata` and `classify`)."""

    def __init__(self, bento_dir: Path, *, top_k: int, threads: int, chunk_size: int) -> None:
        from dyff.runtime.service import Classifier

        self.classifier = Classifier(
            Path(bento_dir) / "src" / "model", top_k=top_k, threads=threads, chunk_size=chunk_size
        )
        # One inference at a time, as the server's one worker with one thread.
        self._lock = threading.Lock()

    def metadata(self) -> dict[str, Any]:
        return self.classifier.metadata()

    def classify(self, images: Images, top_k: int | None = None) -> TopK:
        with self._lock:
            return topk_of(self.classifier.predict(images), top_k)
