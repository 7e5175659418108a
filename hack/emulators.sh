#!/usr/bin/env bash
# Start the Cloud Datastore and GCS emulators on loopback for manual work;
# prints the environment to export. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python - <<'PY'
import contextlib, signal, time
from dyff import emulators
with contextlib.ExitStack() as stack:
    ds = stack.enter_context(emulators.datastore_emulator())
    gcs = stack.enter_context(emulators.gcs_emulator())
    for k, v in {**ds.env, **gcs.env}.items():
        print(f"export {k}={v}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
PY
