"""Argo CD health checks of the dyff kinds: run them as Argo CD does, and build argocd-cm.

The Lua scripts in config/argocd/health/dyff.io/<Kind>/health.lua are the source.
config/argocd/argocd-cm-patch.yaml embeds them as
`resource.customizations.health.dyff.io_<Kind>`; it is generated from them:

    .venv/bin/python -m tests.config.argocd_health --write

Argo CD runs a health script with gopher-lua (Lua 5.1) and the live object as the
global `obj`, a table built from its JSON; the script returns {status, message}.
Here the same script runs in Lua 5.1 through lupa.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "config" / "argocd"
HEALTH = ARGOCD / "health"
CM_PATCH = ARGOCD / "argocd-cm-patch.yaml"
GROUP = "dyff.io"
KINDS = ("Model", "Dataset", "Evaluation")
STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")


def script_path(kind: str) -> Path:
    return HEALTH / GROUP / kind / "health.lua"


def cm_key(kind: str) -> str:
    return f"resource.customizations.health.{GROUP}_{kind}"


def render_cm_patch() -> str:
    """argocd-cm-patch.yaml, from the Lua files."""
    lines = [
        "# Generated from config/argocd/health/dyff.io/*/health.lua by",
        "#   .venv/bin/python -m tests.config.argocd_health --write",
        "# (tests/config/test_argocd.py fails when it drifts). Apply to an Argo CD install:",
        "#   kubectl -n argocd patch configmap argocd-cm --patch-file "
        "config/argocd/argocd-cm-patch.yaml",
        "# or list it under `patches:` of the kustomization that installs Argo CD.",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: argocd-cm",
        "  namespace: argocd",
        "data:",
    ]
    for kind in KINDS:
        lines.append(f"  {cm_key(kind)}: |")
        for line in script_path(kind).read_text().splitlines():
            lines.append(f"    {line}" if line else "")
    return "\n".join(lines) + "\n"


def _to_lua(lua: Any, value: Any) -> Any:
    """A Lua value from JSON-like data: tables for objects and (1-based) arrays."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(script: str, obj: dict[str, Any]) -> dict[str, str]:
    """{status, message} that `script` gives `obj`, as Argo CD would compute it."""
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=False, register_eval=False)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(script)
    if result is None or lupa_type(result) != "table":
        raise ValueError(f"the health script returned {result!r}, not a table")
    out = {str(k): v for k, v in result.items()}
    if out.get("status") not in STATUSES:
        raise ValueError(f"the health script returned status {out.get('status')!r}")
    return {"status": out["status"], "message": str(out.get("message", ""))}


def lupa_type(value: Any) -> str | None:
    from lupa import lua51

    return lua51.lua_type(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {CM_PATCH.name}")
    args = parser.parse_args(argv)
    text = render_cm_patch()
    if args.write:
        CM_PATCH.write_text(text)
        print(f"wrote {CM_PATCH.relative_to(ROOT)}")
        return 0
    if not CM_PATCH.exists() or CM_PATCH.read_text() != text:
        print(f"{CM_PATCH.relative_to(ROOT)} is out of date: run with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
