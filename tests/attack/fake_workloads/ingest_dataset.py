"""Stands in for a long workload shaped as evaluate runs: the real reaper, a "server" in
a session of its own with a worker child of its own (as `bentoml serve`), a file in
scratch, then work that never ends. Each start appends a line to $FAKE_STARTS."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from dyff.workloads.evaluate import SERVER_TOKEN_ENV, reaper

config_file = Path(sys.argv[sys.argv.index("--config") + 1])
config = json.loads(config_file.read_text())
scratch = Path(config["scratchDir"])
scratch.mkdir(parents=True, exist_ok=True)
(scratch / f"weights-{os.getpid()}.bin").write_bytes(b"\0" * 1_000_000)
token = uuid.uuid4().hex
server = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
    " start_new_session=True)\n"
    "time.sleep(600)\n"
)
with reaper(token):
    subprocess.Popen(
        [sys.executable, "-c", server],
        env={**os.environ, SERVER_TOKEN_ENV: token},
        start_new_session=True,
    )
    with open(os.environ["FAKE_STARTS"], "a") as starts:
        starts.write(f"{config['name']} {os.getpid()}\n")
    time.sleep(600)
