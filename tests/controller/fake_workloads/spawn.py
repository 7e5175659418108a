"""A workload that starts a child (as evaluate starts `bentoml serve`) and keeps running;
the child's pid goes to `pid` beside the config."""

import subprocess
import sys
import time
from pathlib import Path

config = Path(sys.argv[sys.argv.index("--config") + 1])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
(config.parent / "pid").write_text(str(child.pid))
time.sleep(120)
