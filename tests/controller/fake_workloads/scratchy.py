"""A workload that fills its scratch folder, writes to its log and exits 0."""

import json
import sys
from pathlib import Path

config = json.loads(Path(sys.argv[sys.argv.index("--config") + 1]).read_text())
scratch = Path(config["scratchDir"])
scratch.mkdir(parents=True, exist_ok=True)
(scratch / "model.bento").write_bytes(b"\0" * 100_000)
print("scratchy done", flush=True)
