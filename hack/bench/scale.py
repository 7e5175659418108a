"""Bounded memory as data grows (issue 16): ingest and evaluate 10,000 and 100,000 small images.

Each size N of BENCH_SIZES (default `10000,100000`) gets a synthetic dataset of N distinct
BENCH_SIDE x BENCH_SIDE (default 16) RGB PNGs (scikit-learn's digits, scaled up, with a
few levels of seeded noise so that no two rows are the same bytes), 10 classes, in one
Parquet file in the Hugging Face layout (row groups of BENCH_INPUT_ROW_GROUP rows, default
1,000; `0`: one row group for the whole file, as a plain `pq.write_table` writes it). The
model is the demo's tiny ViT (8 px, untrained: only cost matters), served once by
`bentoml serve` exactly as the evaluate workload serves it (`model_server`) and shared by
every evaluation (its start-up is not timed).

Every workload runs in a process of its own (`python scale.py --worker ...`), which times
the workload's own entry point (`main(["--config", FILE])`, imports done before the clock
starts) and reports its peak RSS: its own VmHWM (`/proc/self/status`). The evaluate
workload is pointed at the running server (DYFF_MODEL_URL), so it starts no process and
its VmHWM is all its memory; the server's is reported apart (its processes' VmHWM,
summed, after each size: one server serves every size in turn, so a growth shows as a
rise between sizes).

Lines (one JSON line each, {"bench", "value", "unit", "baseline", "ratio", "load_avg_1m",
...}):

- `scale_ingest_rate` (per size): images/s of the ingest workload (fetch the upload,
  check labels, decode every image once with its derived attributes, cut shards and
  attribute files, store them, report) against a bare loop in the same run, in a process
  of its own: read the same Parquet file in batches, decode each image with PIL, and
  write shards of the same rows (zstd Parquet, sha256, a file each). Bare loops and
  ingestions alternate in pairs (BENCH_INGEST_RUNS of each, default 5, each ingestion into
  a store of its own, a bare loop just before it); each side's best run counts. The sides
  have as many runs each: on a noisy machine the best of more runs is faster, which
  would favour one side. Goal ratio >= 0.8. `paired_ratios`: each pair's ratio.
  `cpu_ratio`: the same with CPU seconds (less sensitive to other load); `other_cpu_s`,
  `baseline_other_cpu_s`: the rest of the machine's CPU seconds during each run.
- `scale_evaluate_time_per_row`: CPU ms per row of the evaluate workload and the model
  server together (the workload's own CPU time over its run, plus the CPU time the
  server's processes spent meanwhile) at the largest size, against that at the smallest;
  each run from an empty prediction cache (plan, stream every shard through the model,
  prediction files, metrics, criteria, status). The sizes run in turn BENCH_EVAL_RUNS
  times (default 2); each size's least run counts. Goal ratio <= 1.1 (`met`). CPU time
  is the primary figure because it measures the work per row, which is what must not
  grow with the rows: wall time on this shared two-core machine also measures whatever
  else runs, and a run ten times longer meets ten times more of it. The wall figures
  stand beside it, labelled (`wall_ms_per_row`, `wall_ratio`, `wall_met`: best run per
  size), with how busy the rest of the machine was during each run (`other_cpu_s`: CPU
  seconds of every other process, from /proc/stat): a wall ratio above the CPU ratio
  with little `other_cpu_s` is time spent waiting, and would be a finding of its own.
  BENCH_EVAL_RUNS=0 leaves evaluation out (ingestion lines only; no model is built).
- `scale_ingest_peak_rss`, `scale_evaluate_peak_rss`: peak RSS (MiB) at the largest size
  against the smallest, the highest of each size's runs. Goal ratio <= 1.2.
- `scale_server_peak_rss`: the model server's (informational; no goal).

BENCH_SHARD_ROWS (1000), BENCH_BATCH (256), BENCH_CONCURRENCY (3) set the dataset's
shard size and the evaluation's batch size and requests in flight. The machine's load
moves every figure: each line carries the 1-minute load average when it was measured,
and each run the CPU seconds the rest of the machine used during it (`other_cpu_s`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "10000,100000").split(",") if s.strip()]
SIDE = int(os.environ.get("BENCH_SIDE", "16"))
SHARD_ROWS = int(os.environ.get("BENCH_SHARD_ROWS", "1000"))
INPUT_ROW_GROUP = int(os.environ.get("BENCH_INPUT_ROW_GROUP", "1000"))
BATCH = int(os.environ.get("BENCH_BATCH", "256"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "3"))
INGEST_RUNS = int(os.environ.get("BENCH_INGEST_RUNS", "5"))
EVAL_RUNS = int(os.environ.get("BENCH_EVAL_RUNS", "2"))
READ_BATCH = 256  # the bare loop reads as ingestion does (dyff.datasets.READ_BATCH_ROWS)
GENERATE_CHUNK = 5000  # images generated (and held by this process) at a time


def load_avg_1m() -> float:
    return round(os.getloadavg()[0], 2)


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat: all but
    idle and iowait), summed over the CPUs."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mib(pid: int | str = "self") -> float:
    """Peak resident set size of a process (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


# ------------------------------------------------------------------ data


def examples(n: int, start: int = 0) -> list[tuple[bytes, int]]:
    """Rows start .. start+n-1: distinct SIDE x SIDE RGB PNGs and their digit labels."""
    import numpy as np

    from dyff.tinymodels import digits_png, digits_splits

    train, test = digits_splits()
    images = np.concatenate([test.images, train.images])
    labels = np.concatenate([test.labels, train.labels])
    rows = np.arange(start, start + n)
    picked = images[rows % len(images)]
    scale = max(1, SIDE // images.shape[1])
    if scale > 1:
        picked = np.kron(picked, np.ones((1, scale, scale, 1), dtype=np.uint8))
    rng = np.random.default_rng(start)  # seeded per chunk: the same rows every run
    noise = rng.integers(0, 8, picked.shape, dtype=np.uint8)
    picked = np.where(picked > 247, picked - noise, picked + noise).astype(np.uint8)
    return list(zip(digits_png(picked), (int(t) for t in labels[rows % len(images)]), strict=True))


def write_input(path: Path, n: int) -> Path:
    """N rows in the Hugging Face layout (image struct, ClassLabel), written a chunk at a
    time: each chunk through the tests' `write_parquet`, appended to one file."""
    import pyarrow.parquet as pq

    from tests.workloads.dataset_fixtures import write_parquet

    part = path.with_suffix(".part")
    writer = None
    try:
        for start in range(0, n, GENERATE_CHUNK):
            chunk = examples(min(GENERATE_CHUNK, n - start), start)
            table = pq.read_table(write_parquet(part, chunk, row_group_rows=len(chunk)))
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=INPUT_ROW_GROUP or n)
    finally:
        if writer is not None:
            writer.close()
        part.unlink(missing_ok=True)
    if not INPUT_ROW_GROUP:  # one row group for the whole file, as pq.write_table writes it
        pq.write_table(pq.read_table(path), path, row_group_size=n)
    return path


# --------------------------------------------------------------- workers


def _worker(kind: str, args: list[str]) -> dict[str, Any]:
    """Run one workload here (imports first, then the clock), return its figures."""
    if kind == "ingest":
        from dyff.workloads.ingest_dataset import main as workload
    elif kind == "evaluate":
        from dyff.workloads.evaluate import main as workload
    elif kind == "bare":
        return _bare(Path(args[0]), Path(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown worker {kind}")
    started, cpu, busy = time.perf_counter(), time.process_time(), machine_busy_s()
    rc = workload(["--config", args[0]])
    seconds = time.perf_counter() - started
    if rc != 0:
        raise SystemExit(f"{kind} workload exited {rc}")
    cpu_s = time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "machine_busy_s": machine_busy_s() - busy,
        "peak_rss_mib": vm_hwm_mib(),
    }


def _bare(source: Path, out: Path, shard_rows: int) -> dict[str, Any]:
    """The physical floor of ingestion: read the images in batches, decode each with PIL,
    write shards of `shard_rows` rows (the shard format), each hashed and stored as a file."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from PIL import Image

    from dyff.datasets import SHARD_ROW_GROUP_ROWS, SHARD_SCHEMA, SHARD_WRITER_OPTIONS

    out.mkdir(parents=True, exist_ok=True)
    started, cpu, busy = time.perf_counter(), time.process_time(), machine_busy_s()
    images: list[bytes] = []
    labels: list[int] = []
    first = 0

    def cut() -> None:
        table = pa.table(
            {
                "row_id": pa.array(range(first, first + len(images)), type=pa.int64()),
                "image": pa.array(images, type=pa.binary()),
                "label": pa.array(labels, type=pa.int32()),
            },
            schema=SHARD_SCHEMA,
        )
        buf = io.BytesIO()
        with pq.ParquetWriter(buf, SHARD_SCHEMA, **SHARD_WRITER_OPTIONS) as writer:
            writer.write_table(table, row_group_size=SHARD_ROW_GROUP_ROWS)
        data = buf.getvalue()
        (out / hashlib.sha256(data).hexdigest()).write_bytes(data)

    rows = 0
    with pq.ParquetFile(source) as pf:
        for batch in pf.iter_batches(batch_size=READ_BATCH, columns=["image", "label"]):
            encoded = pc.struct_field(batch.column("image"), "bytes").to_pylist()
            for data, label in zip(encoded, batch.column("label").to_pylist(), strict=True):
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                images.append(data)
                labels.append(label)
                if len(images) == shard_rows:
                    cut()
                    first += len(images)
                    images, labels = [], []
            rows += batch.num_rows
    if images:
        cut()
    return {
        "seconds": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
        "machine_busy_s": machine_busy_s() - busy,
        "peak_rss_mib": vm_hwm_mib(),
        "rows": rows,
    }


def worker(kind: str, *args: str | Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`kind` in a fresh process of its own; its figures (the last line it prints)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


# ------------------------------------------------------------------- run


def server_cpu_s() -> float:
    """CPU seconds of this process's live descendants (the model server and its workers)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def server_hwm_mib() -> float:
    """VmHWM of this process's descendants (the model server and its workers), summed."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error, OSError, RuntimeError):
            total += vm_hwm_mib(child.pid)
    return total


@contextlib.contextmanager
def platform_with_model(tmp: Path) -> Iterator[Any]:
    from dyff.models import package_transformers
    from dyff.tinymodels import untrained_tiny_vit
    from tests.workloads.evaluation_fixtures import Platform

    model_dir = untrained_tiny_vit(tmp / "model")
    bento = package_transformers(model_dir, tmp / "package")
    platform = Platform(tmp / "platform")
    platform.add_model("tiny", model_dir, bento)
    yield platform


def add_dataset(platform: Any, name: str, source: Path) -> Path:
    """The Dataset record over `source`, uploaded; returns the ingest workload's config."""
    from dyff.schema import Dataset, DatasetSource, DatasetSpec, ObjectMeta
    from tests.workloads.evaluation_fixtures import OWNER

    upload = platform._upload(OWNER, "Dataset", name, source.read_bytes())
    platform.records.create(
        Dataset(
            metadata=ObjectMeta(name=name, namespace=OWNER),
            spec=DatasetSpec(
                source=DatasetSource(form="parquet", upload=upload),
                shard_rows=SHARD_ROWS,
                public=True,
            ),
        )
    )
    config: Path = platform.config_file(OWNER, name)
    return config


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(_worker(sys.argv[2], sys.argv[3:])), flush=True)
        return 0
    from dyff.evaluation import resolve
    from dyff.schema import Dataset, Evaluation
    from dyff.workloads.evaluate import ServerOptions, model_server
    from dyff.workloads.pod import MODEL_URL_ENV
    from tests.workloads.evaluation_fixtures import OWNER, Platform

    sizes = sorted(SIZES)
    small, large = sizes[0], sizes[-1]
    ingest: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    bare: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    evaluate: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    server: dict[int, float] = {}
    loads: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="dyff-bench-scale-") as tmp_name,
        (
            platform_with_model(Path(tmp_name))
            if EVAL_RUNS > 0
            else contextlib.nullcontext(Platform(Path(tmp_name) / "platform"))
        ) as platform,
    ):
        tmp = Path(tmp_name)
        for n in sizes:
            source = write_input(tmp / f"input-{n}.parquet", n)
            # Bare loop and workload in pairs, as many runs of each (the best of more runs
            # is faster on a noisy machine): a change of load hits both sides. Each
            # ingestion stores into a store of its own (the first, the one evaluated), so
            # that none finds the shards already stored.
            for run in range(INGEST_RUNS):
                bare[n].append(worker("bare", source, tmp / f"bare-{n}-{run}", SHARD_ROWS))
                target = platform if run == 0 else Platform(tmp / f"ingest-{n}-{run}")
                ingest[n].append(worker("ingest", add_dataset(target, f"d{n}", source)))
            ds = platform.records.get(Dataset, OWNER, f"d{n}")
            assert ds.status.phase == "Ready" and ds.status.rows == n, ds.status
            loads[f"ingest{n}"] = load_avg_1m()
        if EVAL_RUNS < 1:
            sizes_evaluated: list[int] = []
        else:
            sizes_evaluated = sizes
            probe = platform.order(OWNER, "probe", dataset=f"d{small}", model="tiny", top_k=5)
            inputs = resolve(platform.records, platform.blobs, probe)
            options = ServerOptions(torch_threads=1)
            with model_server(
                inputs, platform.blobs, tmp / "serve", model_url=None, options=options
            ) as url:
                for run in range(EVAL_RUNS):  # sizes in turn, so that load changes hit each
                    for n in sizes:
                        account = f"eval{n}-{run}"  # a fresh prediction cache: all inferred
                        platform.order(
                            account, "e", dataset=f"d{n}", model="tiny", top_k=5,
                            batch_size=BATCH, concurrency=CONCURRENCY,
                        )  # fmt: skip
                        config = platform.config_file(account, "e")
                        before = server_cpu_s()
                        figures = worker("evaluate", config, env={MODEL_URL_ENV: url})
                        figures["server_cpu_s"] = server_cpu_s() - before
                        evaluate[n].append(figures)
                        ev = platform.records.get(Evaluation, account, "e")
                        assert ev.status.phase == "Complete", ev.status
                        assert ev.status.progress is not None and ev.status.progress.rows == n
                        server[n] = server_hwm_mib()
                        loads[f"evaluate{n}"] = load_avg_1m()

    def best(runs: list[dict[str, Any]]) -> float:
        return min(r["seconds"] for r in runs)

    def peak(runs: list[dict[str, Any]]) -> float:
        return max(r["peak_rss_mib"] for r in runs)

    def seconds(runs: list[dict[str, Any]], key: str = "seconds") -> list[float]:
        return [round(r[key], 2) for r in runs]

    def least(runs: list[dict[str, Any]], *keys: str) -> float:
        return min(sum(r[k] for k in keys) for r in runs)

    def others(runs: list[dict[str, Any]], *own: str) -> list[float]:
        """CPU seconds the rest of the machine used during each run (approximate)."""
        return [round(r["machine_busy_s"] - sum(r[k] for k in own), 2) for r in runs]

    common = {"sizes": sizes, "image_px": SIDE, "shard_rows": SHARD_ROWS, "cpus": os.cpu_count()}
    for n in sizes:
        rate, base = n / best(ingest[n]), n / best(bare[n])
        emit(
            "scale_ingest_rate", rate, "images/s", base, goal=">= 0.8", met=rate / base >= 0.8,
            rows=n, value_is="ingest workload, wall time, best of its runs",
            baseline_is="bare PIL decode + shard write loop, own process, best of its runs",
            runs_s=seconds(ingest[n]), baseline_runs_s=seconds(bare[n]),
            paired_ratios=[round(b["seconds"] / i["seconds"], 3)
                           for b, i in zip(bare[n], ingest[n], strict=True)],
            cpu_ratio=round(least(bare[n], "cpu_s") / least(ingest[n], "cpu_s"), 3),
            cpu_s=seconds(ingest[n], "cpu_s"), baseline_cpu_s=seconds(bare[n], "cpu_s"),
            other_cpu_s=others(ingest[n], "cpu_s"),
            baseline_other_cpu_s=others(bare[n], "cpu_s"),
            input_row_group=INPUT_ROW_GROUP or n, load_avg_1m=loads[f"ingest{n}"], **common,
        )  # fmt: skip
    if sizes_evaluated:
        # CPU ms per row (workload + model server), least of the runs at each size.
        cpu_per_row = {n: 1000 * least(evaluate[n], "cpu_s", "server_cpu_s") / n for n in sizes}
        wall_per_row = {n: 1000 * best(evaluate[n]) / n for n in sizes}
        cpu_ratio = cpu_per_row[large] / cpu_per_row[small]
        wall_ratio = wall_per_row[large] / wall_per_row[small]
        emit(
            "scale_evaluate_time_per_row", cpu_per_row[large], "cpu ms/row",
            cpu_per_row[small], goal="<= 1.1", met=cpu_ratio <= 1.1, rows=large,
            baseline_rows=small,
            value_is="CPU time per row of the evaluate workload and the model server together,"
            " least of the runs at each size, sizes run in turn",
            wall_ms_per_row={n: round(v, 4) for n, v in wall_per_row.items()},
            wall_ratio=round(wall_ratio, 3), wall_met=wall_ratio <= 1.1,
            wall_is="wall time per row of the evaluate workload, best of the runs at each size",
            runs_s={n: seconds(evaluate[n]) for n in sizes},
            cpu_s={n: seconds(evaluate[n], "cpu_s") for n in sizes},
            server_cpu_s={n: seconds(evaluate[n], "server_cpu_s") for n in sizes},
            other_cpu_s={n: others(evaluate[n], "cpu_s", "server_cpu_s") for n in sizes},
            batch_size=BATCH, concurrency=CONCURRENCY, load_avg_1m=loads[f"evaluate{large}"],
            **common,
        )  # fmt: skip
    for bench, figures, key in (
        ("scale_ingest_peak_rss", ingest, "ingest"),
        ("scale_evaluate_peak_rss", evaluate, "evaluate"),
    ):
        if key == "evaluate" and not sizes_evaluated:
            continue
        value, base = peak(figures[large]), peak(figures[small])
        extra = {}
        if key == "ingest":
            extra["bare_peak_rss_mib"] = {n: round(peak(bare[n]), 1) for n in sizes}
        emit(
            bench, value, "MiB", base, goal="<= 1.2", met=value / base <= 1.2, rows=large,
            baseline_rows=small,
            runs_mib={n: [round(r["peak_rss_mib"], 1) for r in figures[n]] for n in sizes},
            measured="the workload process's own VmHWM, the highest of its runs",
            load_avg_1m=loads[f"{key}{large}"], **extra, **common,
        )  # fmt: skip
    if not sizes_evaluated:
        return 0
    emit(
        "scale_server_peak_rss", server[large], "MiB", server[small], goal=None, met=None,
        rows=large, baseline_rows=small,
        measured="VmHWM of the model server's processes, summed; one server for every size,"
        " read after each", load_avg_1m=loads[f"evaluate{large}"], **common,
    )  # fmt: skip
    return 0


def emit(bench: str, value: float, unit: str, baseline: float, **extra: Any) -> None:
    line = {
        "bench": bench,
        "value": round(value, 3),
        "unit": unit,
        "baseline": round(baseline, 3),
        "ratio": round(value / baseline, 3) if baseline else None,
        **extra,
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    sys.exit(main())
