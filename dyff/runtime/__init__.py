"""Serving models: dyff's BentoML service, starting `bentoml serve`, and a client for it.

`runtime_version()` names the code that turns a dataset image into a prediction:
the client's decoding and resizing (`client.py`), the service's preprocessing and
forward pass (`service.py`, which also replaces the copy inside every dyff Bento
when it is served), and the libraries they call. It is part of every prediction's
reuse key, so predictions made by other code are never reused as if they were
these.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

# The files whose code computes predictions, and the libraries whose versions do.
RUNTIME_FILES = ("client.py", "service.py")
RUNTIME_PACKAGES = ("torch", "transformers", "pillow", "numpy")


@functools.cache
def runtime_version() -> str:
    """sha256 over the prediction-computing sources and library versions (hex)."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in RUNTIME_FILES:
        h.update(f"{name}\0".encode() + (here / name).read_bytes() + b"\0")
    for package in RUNTIME_PACKAGES:
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "absent"
        h.update(f"{package}=={version}\0".encode())
    return h.hexdigest()
