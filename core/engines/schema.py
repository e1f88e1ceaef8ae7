"""A pre-flight check of JSON schemas used for structured output.

The grammar for a schema is compiled inside the engine's batch step, where an error
would abort every request in the batch (the worker must then restart). Rejecting
schemas with unknown types here turns that into a BadParameter for one request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ovbot.core.errors import BadParameter

JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def check_json_schema(schema: Any, path: str = "json_schema") -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, Mapping):
        raise BadParameter(path, "must be a JSON object")
    declared = schema.get("type")
    if declared is not None:
        types = declared if isinstance(declared, list) else [declared]
        unknown = [t for t in types if t not in JSON_TYPES]
        if unknown or not types:
            raise BadParameter(f"{path}.type", f"unsupported type {unknown or declared!r}")
    for key in _SUBSCHEMA_LISTS:
        for index, sub in enumerate(schema.get(key, ()) or ()):
            check_json_schema(sub, f"{path}.{key}[{index}]")
    for key in _SUBSCHEMA_MAPS:
        children = schema.get(key) or {}
        if not isinstance(children, Mapping):
            raise BadParameter(f"{path}.{key}", "must be an object")
        for name, sub in children.items():
            check_json_schema(sub, f"{path}.{key}.{name}")
    for key in ("items", "additionalProperties", "not"):
        if key in schema and not isinstance(schema[key], bool):
            check_json_schema(schema[key], f"{path}.{key}")
