"""Parsing documents that users wrote (a model's config.json, a safetensors header, a
Parquet file's metadata, a bento.yaml): bounded in nesting, and every failure a
WorkloadFailed with the caller's reason, never a RecursionError and a traceback."""

from __future__ import annotations

import json
from typing import Any

from dyff.errors import WorkloadFailed

# Far deeper than any real config or header (they nest a handful of levels).
MAX_DEPTH = 32


class NestedTooDeeply(WorkloadFailed):
    """A document nested beyond MAX_DEPTH: built to hurt its reader."""


def depth(doc: Any) -> int:
    """Nesting depth of a parsed JSON/YAML document (a scalar is 0), without recursion."""
    deepest, stack = 0, [(doc, 0)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(node, dict):
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node)
    return deepest


def _bounded(doc: Any, what: str, reason: str) -> Any:
    if depth(doc) > MAX_DEPTH:
        raise NestedTooDeeply(reason, f"{what} is nested more than {MAX_DEPTH} levels deep")
    return doc


def load_json(data: bytes | str, what: str, reason: str) -> Any:
    """`data` parsed as JSON, or WorkloadFailed(reason) saying why not."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise NestedTooDeeply(reason, f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WorkloadFailed(reason, f"{what} is not valid JSON: {exc}") from None
    return _bounded(doc, what, reason)


def load_yaml(data: bytes | str, what: str, reason: str) -> Any:
    """`data` parsed as YAML (safe_load: no objects), or WorkloadFailed(reason)."""
    import yaml

    try:
        doc = yaml.safe_load(data)
    except RecursionError:
        raise NestedTooDeeply(reason, f"{what} is nested too deeply") from None
    except yaml.YAMLError as exc:
        raise WorkloadFailed(reason, f"{what} is not valid YAML: {exc}") from None
    return _bounded(doc, what, reason)
