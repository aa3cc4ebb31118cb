"""Comparing workflows: resume refuses other work; reprocess reruns what a change affects."""

from __future__ import annotations

from typing import Any

# how and where (and how it is shown), not what
IGNORED = ("compute", "store.path", "store.overwrite", "view", "scan.allow_missing")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in IGNORED)


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose value differs between two workflow dicts (how/where keys left out)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if not _ignored(k) and a.get(k) != b.get(k))
