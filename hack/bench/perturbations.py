"""Image perturbations for robustness criteria (issue 12): milliseconds per 224 x 224 image.

Prints one JSON line per kind:

{"bench": "perturb_<kind>", "value": ms, "unit": "ms", "baseline": png_ms, "ratio": ...,
 "per_severity_ms": {...}, "load_avg_1m": ...}

- `value`: the median over BENCH_ROUNDS (default 5) rounds of the mean time of
  `dyff.perturbations.perturb` on one 224 x 224 RGB image (a smooth synthetic scene with
  noise), averaged over the five severities; `per_severity_ms` gives each one. Goal: well
  under 10 ms for every kind (blur at sigma 6 may take more).
- `baseline`: in the same run, the median time of a bare `PIL.Image.open(...).convert("RGB")`
  + `np.asarray` of the same image as a PNG in memory (what every evaluated row costs
  anyway). `ratio` = value / baseline.
- `cpu_ms`: the median process CPU time per call over every severity and round, which a
  shared, loaded machine disturbs less than wall time.

BENCH_SIZE changes the image's side (default 224).
"""

from __future__ import annotations

import functools
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dyff import perturbations  # noqa: E402

SIZE = int(os.environ.get("BENCH_SIZE", "224"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
REPEAT = 10  # calls per timing


def scene(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.3 * np.sin(2 * np.pi * (1.5 * xx + 0.5 * yy)) * np.cos(2 * np.pi * yy)
    disk = ((yy - 0.55) ** 2 + (xx - 0.4) ** 2) < 0.06
    image = np.stack([base, 0.6 * base + 0.3 * disk, 0.4 + 0.2 * xx], axis=-1)
    image += 0.05 * rng.standard_normal(image.shape)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def per_call_ms(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) milliseconds per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(REPEAT):
        fn()
    return (
        (time.perf_counter() - wall) / REPEAT * 1000,
        (time.process_time() - cpu) / REPEAT * 1000,
    )


def main() -> None:
    image = scene(SIZE)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    png = buffer.getvalue()

    def decode() -> None:
        with Image.open(io.BytesIO(png)) as decoded:
            np.asarray(decoded.convert("RGB"))

    for kind in perturbations.KINDS:  # warm-up: imports, caches
        perturbations.perturb(image, kind, 5, seed=0, row_id=0)
    decode()

    baseline = statistics.median(per_call_ms(decode)[0] for _ in range(ROUNDS))
    for kind in perturbations.KINDS:
        rounds: dict[int, list[float]] = {s: [] for s in perturbations.SEVERITIES}
        cpu: list[float] = []
        for row in range(ROUNDS):
            for s in perturbations.SEVERITIES:
                call = functools.partial(perturbations.perturb, image, kind, s, seed=0, row_id=row)
                wall_ms, cpu_ms = per_call_ms(call)
                rounds[s].append(wall_ms)
                cpu.append(cpu_ms)
        per_severity = {s: statistics.median(t) for s, t in rounds.items()}
        value = statistics.fmean(per_severity.values())
        print(
            json.dumps(
                {
                    "bench": f"perturb_{kind}",
                    "value": round(value, 3),
                    "unit": "ms",
                    "baseline": round(baseline, 3),
                    "ratio": round(value / baseline, 2),
                    "per_severity_ms": {str(s): round(t, 3) for s, t in per_severity.items()},
                    "cpu_ms": round(statistics.median(cpu), 3),
                    "size": SIZE,
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
