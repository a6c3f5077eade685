"""Which messages a schema change lets through or shuts out: JSON Schema compatibility, by keyword.

`narrowing(a, b)` lists the ways a message valid under `a` can be invalid under `b`, each naming
the field and the change ("required added: 'age'", "enum value removed: 'late'"). Backward
compatibility of a new version is `narrowing(old, new) == []`, forward is `narrowing(new, old) ==
[]`. It is conservative: a keyword it cannot compare (a changed `pattern`, an unknown keyword) is
reported as breaking, so a real break is never missed; a harmless change can be, and is then
allowed by an explicit compatibility mode or a new version.

No maintained Python library compares JSON Schemas this way (@asyncapi/diff classifies changes to
the AsyncAPI document, not to the payload schemas), so this is the part written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from referencing import Registry

ANNOTATIONS = {"title", "description", "$comment", "examples", "default", "$schema", "$id",
               "$defs", "deprecated", "readOnly", "writeOnly"}  # fmt: skip
HANDLED = {"type", "enum", "const", "properties", "required", "additionalProperties", "items",
           "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
           "minLength", "maxLength", "pattern", "format", "minItems", "maxItems", "uniqueItems",
           "minProperties", "maxProperties"}  # fmt: skip
LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


@dataclass(frozen=True)
class Change:
    path: str  # where in the message, e.g. "features/age" or "(root)"
    what: str  # e.g. "required added: 'age'"

    def __str__(self) -> str:
        return f"at {self.path}: {self.what}"


def dereference(schema: Any, registry: Registry) -> Any:
    """The schema with every `$ref` replaced by what it points to (our schemas do not recurse)."""
    return _deref(schema, registry.resolver(base_uri=schema.get("$id", "")))


def _deref(node: Any, resolver: Any) -> Any:
    if isinstance(node, list):
        return [_deref(n, resolver) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        resolved = resolver.lookup(node["$ref"])
        target = _deref(resolved.contents, resolved.resolver)
        rest = {k: _deref(v, resolver) for k, v in node.items() if k != "$ref"}
        return {**target, **rest}
    return {k: _deref(v, resolver) for k, v in node.items()}


def narrowing(a: Any, b: Any, path: str = "(root)") -> list[Change]:
    """How a message valid under schema `a` can fail schema `b` (both dereferenced)."""
    if b is True or b == {}:
        return []
    if a is False:
        return []
    if b is False:
        return [Change(path, "everything forbidden")]
    if a is True:
        a = {}
    changes = _types(a, b, path) + _values(a, b, path) + _bounds(a, b, path)
    changes += _strings(a, b, path) + _objects(a, b, path) + _arrays(a, b, path)
    for key in sorted(set(b) - HANDLED - ANNOTATIONS):
        if a.get(key) != b[key]:
            changes.append(Change(path, f"keyword {key!r} changed; cannot compare, so breaking"))
    return changes


def _types(a: dict, b: dict, path: str) -> list[Change]:
    if "type" not in b:
        return []
    allowed = _as_set(b["type"])
    if "number" in allowed:
        allowed |= {"integer"}
    if "type" not in a:
        return [Change(path, f"type narrowed: any type -> {_show(b['type'])}")]
    lost = _as_set(a["type"]) - allowed
    return (
        [Change(path, f"type narrowed: {_show(a['type'])} -> {_show(b['type'])}")] if lost else []
    )


def _values(a: dict, b: dict, path: str) -> list[Change]:
    a_values = [a["const"]] if "const" in a else a.get("enum")
    b_values = [b["const"]] if "const" in b else b.get("enum")
    if b_values is None:
        return []
    if a_values is None:
        return [Change(path, f"values restricted to {b_values!r}")]
    return [Change(path, f"enum value removed: {v!r}") for v in a_values if v not in b_values]


def _bounds(a: dict, b: dict, path: str) -> list[Change]:
    changes = []
    for key in LOWER_BOUNDS:
        if key in b and (key not in a or a[key] < b[key]):
            changes.append(Change(path, f"constraint tightened: {key} {a.get(key)} -> {b[key]}"))
    for key in UPPER_BOUNDS:
        if key in b and (key not in a or a[key] > b[key]):
            changes.append(Change(path, f"constraint tightened: {key} {a.get(key)} -> {b[key]}"))
    if "multipleOf" in b and (
        "multipleOf" not in a or (a["multipleOf"] / b["multipleOf"]) % 1 != 0
    ):
        changes.append(
            Change(path, f"constraint tightened: multipleOf {a.get('multipleOf')} -> "
                         f"{b['multipleOf']}")
        )  # fmt: skip
    return changes


def _strings(a: dict, b: dict, path: str) -> list[Change]:
    changes = []
    for key in ("pattern", "format"):
        if key in b and a.get(key) != b[key]:
            changes.append(Change(path, f"constraint changed: {key} {a.get(key)!r} -> {b[key]!r}"))
    return changes


def _objects(a: dict, b: dict, path: str) -> list[Change]:
    changes = [
        Change(path, f"required added: {name!r}")
        for name in b.get("required", [])
        if name not in a.get("required", [])
    ]
    a_props, b_props = a.get("properties", {}), b.get("properties", {})
    a_extra = a.get("additionalProperties", True)
    b_extra = b.get("additionalProperties", True)
    for name, a_schema in a_props.items():
        where = _join(path, name)
        if name in b_props:
            changes += narrowing(a_schema, b_props[name], where)
        elif b_extra is False:
            changes.append(Change(path, f"field removed: {name!r}"))
        else:
            changes += narrowing(a_schema, b_extra, where)
    for name, b_schema in b_props.items():
        if name not in a_props and a_extra is not False:
            changes += narrowing(a_extra, b_schema, _join(path, name))
    if a_extra is not False and b_extra is False:
        changes.append(Change(path, "additional properties closed"))
    elif a_extra is not False and isinstance(b_extra, dict):
        changes += narrowing(a_extra, b_extra, _join(path, "*"))
    return changes


def _arrays(a: dict, b: dict, path: str) -> list[Change]:
    changes = []
    if "items" in b:
        changes += narrowing(a.get("items", True), b["items"], _join(path, "[]"))
    if b.get("uniqueItems") and not a.get("uniqueItems"):
        changes.append(Change(path, "constraint tightened: uniqueItems"))
    return changes


def _join(path: str, name: str) -> str:
    return name if path == "(root)" else f"{path}/{name}"


def _as_set(value: Any) -> set[str]:
    return {value} if isinstance(value, str) else set(value)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else "|".join(value)
