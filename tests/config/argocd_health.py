"""Argo CD health checks of the dyff kinds: run them as Argo CD does.

The Lua scripts in config/argocd/health/dyff.io/<Kind>/health.lua and
config/argocd/argocd-cm-patch.yaml (which embeds them as
`resource.customizations.health.dyff.io_<Kind>`) are generated from the kinds'
lifecycles by `dyff.argocdgen` (`make argocd`).

Argo CD runs a health script with gopher-lua (Lua 5.1) and the live object as the
global `obj`, a table built from its JSON; the script returns {status, message}.
Unless `resource.customizations.useOpenLibs.<group>_<Kind>` is "true", Argo CD opens
only the base, package and table libraries and a reduced `os` (argo-cd util/lua/lua.go,
`SkipOpenLibs`): no `string`, `math`, `io`, `coroutine` or `debug`, and so no string
methods either (`("x"):upper()` needs the string library as the strings' metatable).
Here the same script runs in Lua 5.1 through lupa, with those libraries taken away.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dyff import argocdgen

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "config" / "argocd"
HEALTH = ARGOCD / "health"
CM_PATCH = ARGOCD / argocdgen.CM_PATCH
GROUP = "dyff.io"
KINDS = tuple(argocdgen.kinds())
STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")


def script_path(kind: str) -> Path:
    return ARGOCD / argocdgen.script_path(kind)


def cm_key(kind: str) -> str:
    return argocdgen.cm_key(kind)


# What Argo CD does not open for a health script (the `os` it opens has none of the
# real one's process and file functions, so none is left here).
CLOSED = ("string", "math", "io", "coroutine", "debug", "os")
CLOSE_LIBRARIES = (
    'debug.setmetatable("", nil)\n'  # string methods come from the string library
    + "".join(f"{name} = nil\n" for name in CLOSED)
)


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
    lua.execute(CLOSE_LIBRARIES)
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
