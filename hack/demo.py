"""`make demo`: a real evaluation end to end on this machine, through the same CLI client
and HTTP API a user has.

It starts `dyff up` (records and blobs under .dyff/demo), trains a tiny ViT on
scikit-learn's digits (seconds), uploads it as a transformers model, uploads the
held-out digits as Parquet, orders an evaluation, waits with progress, prints
the metrics and writes the report. Run it again: the model and dataset are
there already, and the new evaluation reuses every prediction (no inference).
It leaves nothing running.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DYFF_DEMO_DIR", ROOT / ".dyff" / "demo"))
MIN_ACCURACY = 0.9


def say(message: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"{bold}==> {message}{plain}", flush=True)


def start_dyff(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dyff.cli", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def relay() -> None:  # keep draining, so dyff up never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"    | {line.rstrip()}", flush=True)

    threading.Thread(target=relay, daemon=True).start()
    url = f"http://127.0.0.1:{port}/healthz"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dyff up exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    stop_dyff(proc)
    raise SystemExit("dyff up did not answer within 120 s")


def stop_dyff(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def digits_artifacts(folder: Path) -> tuple[Path, Path]:
    """The trained tiny model (cached) and the held-out digits as HF-layout Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dyff import tinymodels

    folder.mkdir(parents=True, exist_ok=True)
    model_dir = folder / "digits-vit"
    if not (model_dir / "config.json").exists():
        say("training a tiny ViT on scikit-learn's digits")
        started = time.monotonic()
        tinymodels.train_tiny_vit(model_dir)
        print(f"    trained in {time.monotonic() - started:.0f}s", flush=True)
    parquet = folder / "digits-test.parquet"
    if not parquet.exists():
        _, test = tinymodels.digits_splits()
        images = tinymodels.digits_png(test.images)
        names = [str(i) for i in range(10)]
        features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}
        table = pa.table(
            {
                "image": pa.array(
                    [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)],
                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                ),
                "label": pa.array([int(x) for x in test.labels], type=pa.int64()),
            }
        )
        table = table.replace_schema_metadata(
            {"huggingface": json.dumps({"info": {"features": features}})}
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        parquet.write_bytes(buf.getvalue())
    return model_dir, parquet


def main() -> int:
    from dyff.client import ApiError, Client, ClientConfig
    from dyff.emulators import free_port

    DATA.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DYFF_DATA_DIR": str(DATA / "data"),
        "DYFF_CONFIG": str(DATA / "client.json"),
        "HF_HUB_OFFLINE": "1",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    os.environ.update({k: env[k] for k in ("DYFF_CONFIG", "HF_HUB_OFFLINE")})
    model_dir, parquet = digits_artifacts(DATA / "artifacts")

    say("starting dyff up")
    proc = start_dyff(env, free_port())
    try:
        with Client(ClientConfig.load()) as c:
            for plural, name, form, path, extra in (
                ("models", "digits-vit", "transformers", model_dir, {}),
                ("datasets", "digits-test", "parquet", parquet, {"shardRows": 100}),
            ):
                try:
                    c.get(plural, name)
                    say(f"{plural[:-1]} {name} is there already: reusing it")
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    say(f"uploading {plural[:-1]} {name}")
                    c.register_upload(plural, name, form, path, extra_spec=extra)
                entity = c.wait(plural, name, timeout=900)
                print(f"    {name}: {entity['status']['phase']}", flush=True)

            previous = [
                e
                for e in c.list_all("evaluations")
                if e["metadata"]["name"].startswith("digits-run-")
            ]
            name = f"digits-run-{len(previous) + 1}"
            say(f"ordering evaluation {name}")
            c.order("digits-vit", "digits-test", name=name)
            last = ""

            def show(entity: dict) -> None:
                nonlocal last
                p = (entity.get("status") or {}).get("progress") or {}
                line = (
                    f"    {entity['status'].get('phase') or 'Pending'}: "
                    f"{p.get('shardsDone', 0)}/{p.get('shardsTotal', '?')} shards, "
                    f"{p.get('shardsReused', 0)} reused"
                )
                if line != last:
                    print(line, flush=True)
                    last = line

            evaluation = c.wait("evaluations", name, timeout=1800, interval=0.5, on_change=show)
            metrics = c.metrics(name)
            progress = evaluation["status"].get("progress") or {}
            reused, total = progress.get("shardsReused", 0), progress.get("shardsTotal", 0)
            say("metrics")
            for key in ("accuracy", "top5Accuracy", "ece"):
                if metrics.get(key) is not None:
                    print(f"    {key:>13}: {metrics[key]:.4f}")
            print(f"    {'macro F1':>13}: {(metrics.get('macro') or {}).get('f1', 0):.4f}")
            print(f"    {'rows':>13}: {metrics.get('rows')}")
            if total and reused == total:
                say(f"reused everything: all {total} shards came from earlier runs, 0 inferred")
            else:
                say(f"inferred {total - reused} of {total} shards ({reused} reused)")
            report = DATA / "reports" / f"{name}.html"
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(c.report(name))
            say(f"report: {report}")
            if metrics.get("accuracy", 0) < MIN_ACCURACY:
                print(f"accuracy {metrics.get('accuracy')} is below {MIN_ACCURACY}", flush=True)
                return 1
    finally:
        say("stopping dyff")
        stop_dyff(proc)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
