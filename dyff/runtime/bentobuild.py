"""Build and export one Bento: `python -m dyff.runtime.bentobuild SPEC_JSON`.

Run as a subprocess by `dyff.models.package_transformers`, so that BentoML
reads BENTOML_HOME (a private folder) from a fresh environment and its global
state never leaks into the caller.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    import bentoml

    bento = bentoml.bentos.build(
        spec["service"],
        name=spec["name"],
        version=spec["version"],
        labels=spec["labels"],
        include=["service.py", "model/**"],
        # No lock: resolving versions needs an index, and the build must work offline.
        python={"lock_packages": False, "packages": spec["packages"]},
        build_ctx=spec["ctx"],
    )
    # tar.gz: readable by dyff.archives.safe_extract (BentoML's default .bento is tar.xz).
    bentoml.export_bento(bento.tag, spec["out"], output_format="gz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
