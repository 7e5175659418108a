"""What a benchmark that runs models sets up first: offline and quiet (nothing downloads,
nothing phones home), and the repository importable. A bench runs as a script, so this
folder is on `sys.path`: `from benchenv import ROOT` before importing dyff."""

from __future__ import annotations

import os
import sys
from pathlib import Path

for name, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(name, value)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
