"""Images/s of the full evaluation path against the physical limit, for two models.

The path: dataset shards (PNG bytes in Parquet, ingested by the real ingest
workload) -> decoded once -> the model's Bento under `bentoml serve` (started
exactly as the evaluate workload starts it, `dyff.workloads.evaluate.
model_server`) -> prediction files -> metrics.json, manifest and status
(`run_evaluation`, from an empty cache so every shard is inferred). Timed from
the plan to the Complete status; the server's start-up is reported apart.

The limit: a bare in-process loop over the same images, already decoded, through
the service's own vectorised image processor and the forward pass, batches of
32 (in a process of its own), in the configuration that is fastest here: one
torch thread, or every core with idle OpenMP threads sleeping (spinning ones
collapse when other processes load the cores), tried twice on a sample. The
evaluation path's server gets the same configuration (the workload's default
is `server_threads` with passive waiting, or DYFF_MODEL_THREADS).

Other processes load this machine, so both are measured alternately, several
rounds: bare, path, bare, path, ..., bare. Each path run is compared with the
mean of the bare runs just before and after it, and `ratio` is the median of
these paired ratios (`value` and `baseline` are the medians of each side).
`cpu_ratio` compares CPU seconds per image instead (client, server and its
workers summed against the bare loop): less sensitive to load, it shows the
work the path adds. The bare loop runs in a session of its own, as the server
does: Linux's autogroup scheduling gives each session an equal share of a
loaded machine, so the path (server session + client session) can still get
more of a contended CPU than the bare loop; on an idle machine it cannot.

Three lines, one per model:
- "vit_small": ViT-Small dimensions at 224 px, random weights (compute-bound);
  goal ratio >= 0.9.
- "vit_tiny": the demo's 8 px digits ViT architecture (weights untrained: the
  cost is the same); overhead-bound; goal ratio >= 0.5.
- "convnext_crop": a small ConvNext (1.9 M parameters, random weights) whose
  processor resizes the shortest edge to 224/crop_pct and centre-crops 224, on
  images of mixed sizes (180-360 px a side): the path sends every image at its
  own size and the server runs the model's own processor. The bare loop is the
  plain `AutoImageProcessor` + forward pass on the decoded images; goal ratio
  >= 0.85.
Each prints {"bench": "evaluation_throughput", "model": ..., "value": img/s,
"unit": "images/s", "baseline": bare img/s, "ratio": value / baseline, ...}.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchenv  # noqa: F401 - first: sets the environment before dyff loads
import numpy as np
import psutil

from dyff.evaluation import resolve
from dyff.runtime.client import Images
from dyff.schema import Evaluation
from dyff.workloads.evaluate import ServerOptions, model_server, run_evaluation
from tests.workloads.evaluation_fixtures import Platform

BARE_BATCH = 32


@dataclass(frozen=True)
class Case:
    model: str
    rows: int
    shard_rows: int
    side: int  # image side in the dataset (the model's size: no resize), 0: mixed sizes
    batch_size: int  # images per request on the evaluation path
    concurrency: int
    rounds: int
    sample: int  # images per thread count when choosing the bare loop's threads


CASES = {
    "vit_small": Case("vit_small", int(os.environ.get("BENCH_SMALL_ROWS", "64")), 32, 224,
                      batch_size=32, concurrency=3, rounds=3, sample=32),
    "vit_tiny": Case("vit_tiny", int(os.environ.get("BENCH_TINY_ROWS", "20000")), 1000, 8,
                     batch_size=1000, concurrency=3, rounds=3, sample=4000),
    "convnext_crop": Case("convnext_crop", int(os.environ.get("BENCH_CONVNEXT_ROWS", "192")), 32,
                          0, batch_size=32, concurrency=3, rounds=5, sample=32),
}  # fmt: skip


def convnext_crop(out: Path) -> Path:
    """A small ConvNext with the resize-then-crop processor (crop_pct), random weights."""
    import torch
    from transformers import ConvNextConfig, ConvNextForImageClassification
    from transformers.models.convnext.image_processing_pil_convnext import (
        ConvNextImageProcessorPil,
    )

    from dyff.tinymodels import DIGIT_LABELS, _save

    torch.manual_seed(0)
    config = ConvNextConfig(
        hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 4, 2],
        id2label=dict(enumerate(DIGIT_LABELS)),
        label2id={v: i for i, v in enumerate(DIGIT_LABELS)},
    )  # fmt: skip
    processor = ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875)
    return _save(ConvNextForImageClassification(config), processor, out)


def tiny_vit_untrained(out: Path) -> Path:
    """The demo model's architecture (dyff.tinymodels.train_tiny_vit), untrained."""
    from dyff.tinymodels import untrained_tiny_vit

    return untrained_tiny_vit(out)


def examples(case: Case) -> list[tuple[bytes, int]]:
    """Digits (every one the set has, cycled) as RGB PNGs at the model's side."""
    from dyff.tinymodels import digits_png, digits_splits

    train, test = digits_splits()
    images = np.concatenate([test.images, train.images])
    labels = np.concatenate([test.labels, train.labels])
    distinct = min(case.rows, len(images))
    if case.side == 0:  # mixed sizes: each digit stretched to its own height and width
        from PIL import Image

        sizes = np.random.default_rng(0).integers(180, 361, (distinct, 2))
        pngs = []
        for img, (h, w) in zip(images[:distinct], sizes, strict=True):
            buf = io.BytesIO()
            Image.fromarray(img).resize((int(w), int(h)), Image.Resampling.BILINEAR).save(
                buf, format="PNG"
            )
            pngs.append(buf.getvalue())
        return [(pngs[i % distinct], int(labels[i % distinct])) for i in range(case.rows)]
    scale = case.side // images.shape[1]
    if scale > 1:
        images = np.kron(images[:distinct], np.ones((1, scale, scale, 1), dtype=np.uint8))
    pngs = digits_png(images[:distinct])
    return [(pngs[i % distinct], int(labels[i % distinct])) for i in range(case.rows)]


def bare_loop(model_dir: Path, images: Images, threads: int) -> Callable[[int], float]:
    """The bare loop over `images` (decoded RGB), batches of 32, in this process: the
    service's own batched preprocessing where it has one (a resize-only processor), else
    the plain processor; then the forward pass. Returns a function timing it over the
    first n images."""
    import torch

    from dyff.runtime.service import Classifier

    clf = Classifier(model_dir, top_k=5, threads=threads)

    def pixels(batch: Images) -> Any:
        if clf.resize is not None:
            return clf.pixel_values(batch)[0][1]
        from PIL import Image

        pil = [Image.fromarray(a) for a in batch]
        return clf.processor(images=pil, return_tensors="pt")["pixel_values"]

    with torch.inference_mode():
        clf.model(pixel_values=pixels(images[:BARE_BATCH]))  # warm, once

    def run(n: int) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            for i in range(0, n, BARE_BATCH):
                clf.model(pixel_values=pixels(images[i : min(n, i + BARE_BATCH)]))
            return n / (time.perf_counter() - start)

    return run


def bare_worker(argv: list[str]) -> int:
    """`--bare-worker MODEL_DIR IMAGES_PARQUET THREADS`: decode the images once, then for
    each line `n` on stdin print the images/s of the bare loop over n images."""
    import pyarrow.parquet as pq

    from dyff.runtime.client import decode_image

    model_dir, images_path, threads = Path(argv[0]), Path(argv[1]), int(argv[2])
    encoded = pq.read_table(images_path).column("image").to_pylist()
    images: Images = [decode_image(data) for data in encoded]
    if all(a.shape == images[0].shape for a in images):
        images = np.stack(images)  # one size: slices of one array, as the server gets them
    run = bare_loop(model_dir, images, threads)
    print("ready", flush=True)
    for line in sys.stdin:
        print(run(int(line)), flush=True)
    return 0


class BareWorker:
    """A bare loop in a process of its own: the OpenMP wait policy is fixed when torch
    loads, so each (threads, policy) configuration needs its own process."""

    def __init__(self, model_dir: Path, images_path: Path, threads: int, policy: str) -> None:
        self.threads, self.policy = threads, policy
        env = {**os.environ}
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--bare-worker", str(model_dir), str(images_path),
             str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            # A session of its own, as the server has: with the kernel's autogroup
            # scheduling, each session gets an equal share of a loaded machine.
            start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("bare worker failed to start")

    def rate(self, n: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def fastest_bare(model_dir: Path, images: list[bytes], workdir: Path, sample: int) -> BareWorker:
    """The fastest bare configuration here, one torch thread or every core (idle OpenMP
    threads sleeping, as the workload's server has them), each timed twice on `sample`
    images, alternately."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = workdir / "images.parquet"
    pq.write_table(pa.table({"image": pa.array(images, type=pa.binary())}), path)
    cpus = os.cpu_count() or 1
    configs = [(1, "default")] + ([(cpus, "PASSIVE")] if cpus > 1 else [])
    workers = [BareWorker(model_dir, path, t, p) for t, p in configs]
    rates = [0.0] * len(workers)
    for _ in range(2):
        for i, w in enumerate(workers):
            rates[i] = max(rates[i], w.rate(min(sample, len(images))))
    best = workers[rates.index(max(rates))]
    for w in workers:
        if w is not best:
            w.close()
    return best


def run_case(case: Case, workdir: Path) -> dict[str, Any]:
    from dyff.models import package_transformers
    from dyff.tinymodels import random_vit_small

    t0 = time.perf_counter()
    model_dir = workdir / "model"
    if case.model == "vit_small":
        random_vit_small(model_dir)
    elif case.model == "convnext_crop":
        convnext_crop(model_dir)
    else:
        tiny_vit_untrained(model_dir)
    bento = package_transformers(model_dir, workdir / "package")
    platform = Platform(workdir / "platform")
    platform.add_model("m", model_dir, bento)
    data = examples(case)
    platform.add_dataset("d", data, case.shard_rows)
    setup_s = time.perf_counter() - t0

    bare_proc = fastest_bare(model_dir, [png for png, _ in data], workdir, case.sample)
    threads = bare_proc.threads

    order = {"model": "m", "dataset": "d", "batch_size": case.batch_size,
             "concurrency": case.concurrency}  # fmt: skip
    probe = platform.order("probe", "probe", **order)  # type: ignore[arg-type]
    inputs = resolve(platform.records, probe)
    bare: list[tuple[float, float]] = []  # (images/s, CPU s per image)
    path: list[tuple[float, float]] = []
    timings: list[dict[str, float]] = []
    t1 = time.perf_counter()
    # The server gets the configuration the bare loop found fastest: like for like.
    options = ServerOptions(torch_threads=threads, omp_passive=bare_proc.policy == "PASSIVE")
    with model_server(
        inputs, platform.blobs, workdir / "serve", model_url=None, options=options
    ) as url:
        serve_start_s = time.perf_counter() - t1
        for rnd in range(case.rounds):
            bare.append(measured(lambda: bare_proc.rate(case.rows), case.rows))
            account = f"bench{rnd}"
            platform.order(account, "e", **order)  # type: ignore[arg-type]
            outs = []

            def evaluate(account: str = account, outs: list[Any] = outs) -> float:
                out = run_evaluation(platform.records, platform.blobs, account, "e", model_url=url)
                assert out is not None and out.images == case.rows, "every shard is inferred"
                outs.append(out)
                return case.rows / out.timings["total_s"]

            path.append(measured(evaluate, case.rows))
            assert platform.records.get(Evaluation, account, "e").status.phase == "Complete"
            timings.append({k: round(v, 2) for k, v in outs[0].timings.items()})
        # Bracket the last path run with a bare one: each path run is compared with the
        # bare runs just before and after it, so a change of load hits both sides.
        bare.append(measured(lambda: bare_proc.rate(case.rows), case.rows))
    bare_proc.close()
    ratios = [p[0] / ((bare[i][0] + bare[i + 1][0]) / 2) for i, p in enumerate(path)]
    cpu_ratios = [((bare[i][1] + bare[i + 1][1]) / 2) / p[1] for i, p in enumerate(path)]
    value = statistics.median(p[0] for p in path)
    baseline = statistics.median(b[0] for b in bare)
    return {
        "bench": "evaluation_throughput",
        "model": case.model,
        "value": round(value, 2),
        "unit": "images/s",
        "baseline": round(baseline, 2),
        "ratio": round(statistics.median(ratios), 3),
        "paired_ratios": [round(r, 3) for r in ratios],
        "cpu_ratio": round(statistics.median(cpu_ratios), 3),
        "rows": case.rows,
        "shards": -(-case.rows // case.shard_rows),
        "image_px": case.side or "180-360 mixed",
        "batch_size": case.batch_size,
        "concurrency": case.concurrency,
        "bare_batch": BARE_BATCH,
        "torch_threads": threads,
        "omp_wait_policy": bare_proc.policy,
        "path_images_s": [round(p[0], 2) for p in path],
        "bare_images_s": [round(b[0], 2) for b in bare],
        "path_timings_s": timings,
        "serve_start_s": round(serve_start_s, 1),
        "setup_s": round(setup_s, 1),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _cpu_seconds() -> float:
    """CPU time of this process and every live descendant (the server and its workers)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def measured(fn: Callable[[], float], images: int) -> tuple[float, float]:
    """(what `fn` returns: images/s, CPU seconds spent per image meanwhile)."""
    before = _cpu_seconds()
    rate = fn()
    return rate, (_cpu_seconds() - before) / images


def main() -> int:
    if sys.argv[1:2] == ["--bare-worker"]:
        return bare_worker(sys.argv[2:])
    logging.basicConfig(level=logging.WARNING)
    names = sys.argv[1:] or list(CASES)
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"dyff-bench-{name}-") as tmp:
            print(json.dumps(run_case(CASES[name], Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
