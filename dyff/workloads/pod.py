"""The entry point of a workload Pod's containers, in the runtime image:

    python -m dyff.workloads.pod workload dyff.workloads.<name>   a workload
    python -m dyff.workloads.pod serve-model                      the Bento sidecar

The controller's Job (controller/executors/manifests.py) carries everything in the
environment named here: the workload config as JSON (no ConfigMap), and for the model
server the blob key of the Bento. `workload` turns that environment into the
`--config FILE` every workload takes, with the Pod's shard of an Indexed Job.

It needs nothing but the `dyff` library, so the runtime image ships no controller.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

MODULE = "dyff.workloads.pod"
# The workload config (dyff.workloads.common.WorkloadConfig) as JSON.
WORKLOAD_CONFIG_ENV = "DYFF_WORKLOAD_CONFIG"
# serve-model: the blob key of the model's packaged Bento.
BENTO_KEY_ENV = "DYFF_BENTO_KEY"
# evaluate: the running model server to use instead of serving the Bento itself.
MODEL_URL_ENV = "DYFF_MODEL_URL"
# Set by Kubernetes in the Pods of an Indexed Job.
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
USAGE = f"usage: python -m {MODULE} (workload dyff.workloads.<name> | serve-model)"


def workload_config_file(environ: Mapping[str, str]) -> Path:
    """The workload config from the environment, with this Pod's shard of an Indexed
    Job, written where the read-only image allows."""
    config = json.loads(environ[WORKLOAD_CONFIG_ENV])
    index = environ.get(COMPLETION_INDEX_ENV)
    if index is not None:
        config["shardIndex"] = int(index)
        config.setdefault("shardCount", 1)
    path = Path(environ.get("TMPDIR", "/tmp")) / "dyff-workload.json"
    path.write_text(json.dumps(config))
    return path


def serve_model(environ: Mapping[str, str]) -> None:
    """Fetch the Bento from the blob store, unpack it (with the current service) and
    become `bentoml serve`, on all interfaces: the kubelet probes the Pod IP, the
    client uses loopback. The DYFF_* knobs in the environment reach the service.

    Only dyff's own service runs here: this Pod holds storage credentials. A user's Bento
    (its own code) is refused; the controller serves those in a Pod of their own."""
    from dyff.models import bento_env, is_dyff_bento, read_manifest, unpack_bento
    from dyff.stores import open_blobs

    config = json.loads(environ[WORKLOAD_CONFIG_ENV])
    work = Path(environ.get("DYFF_WORK_DIR", "/work"))
    blobs = open_blobs(config["blobsUrl"])
    archive = blobs.download(environ[BENTO_KEY_ENV], work / "model.bento")
    target = unpack_bento(archive, work / "bento")
    archive.unlink()
    if not is_dyff_bento(target, read_manifest(target)):
        raise SystemExit("serve-model serves dyff's own Bentos only; this one runs its own code")
    env = bento_env(Path(environ.get("BENTOML_HOME", str(work / "bentoml"))))
    port = environ.get("BENTOML_PORT", "3000")
    cmd = [sys.executable, "-m", "bentoml", "serve", str(target)]
    cmd += ["--host", "0.0.0.0", "--port", port]
    os.execve(sys.executable, cmd, env)


def main(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "workload" and args[1].startswith("dyff.workloads."):
        path = workload_config_file(environ)
        os.execv(sys.executable, [sys.executable, "-m", args[1], "--config", str(path)])
    if args == ["serve-model"]:
        serve_model(environ)
    print(USAGE, file=sys.stderr)
    return 64


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
