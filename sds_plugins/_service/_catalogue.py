"""What ``GET /adapters`` and ``sds-plugins adapters`` list: each adapter and its options."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._adapter_options import MASKED_OPTIONS

if TYPE_CHECKING:
    from .._adapter import Adapter
    from .._engine import Router

__all__ = ["describe_adapter", "describe_adapters"]

_JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}


def _type_of(schema: dict[str, Any], definitions: dict[str, Any]) -> str:
    """A short type name for one property of a JSON schema (``string``, ``integer | null``)."""
    if "$ref" in schema:
        target = definitions.get(schema["$ref"].rsplit("/", 1)[-1], {})
        return _type_of(target, definitions) if target else "object"
    if "enum" in schema:
        return "enum: " + ", ".join(str(value) for value in schema["enum"])
    if "const" in schema:
        return f"const: {schema['const']}"
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return " | ".join(_type_of(part, definitions) for part in schema[union])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if isinstance(kind, str) and kind in _JSON_TYPES:
        if kind == "string" and schema.get("format"):
            return f"string ({schema['format']})"
        return kind
    return "any"


def describe_adapter(adapter: Adapter) -> dict[str, Any]:
    """``{"name", "description", "options": [{"name", "type", "required", "description"}]}``."""
    options: list[dict[str, Any]] = []
    model = adapter.options_model
    if model is not None:
        schema = model.model_json_schema()
        definitions = schema.get("$defs", {})
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            option: dict[str, Any] = {
                "name": name,
                "type": _type_of(prop, definitions),
                "required": name in required,
            }
            if prop.get("description"):
                option["description"] = prop["description"]
            # A secret option's default is not shown (there should be none, but be sure).
            if prop.get("default") is not None and name not in MASKED_OPTIONS:
                option["default"] = prop["default"]
            options.append(option)
    elif adapter.options is not None:
        options = [
            {"name": name, "type": "any", "required": False} for name in sorted(adapter.options)
        ]
    return {
        "name": adapter.name,
        "description": adapter.description,
        "options": options,
        # None: the adapter declares no options and passes whatever it is given through.
        "accepts_any_options": model is None and adapter.options is None,
    }


def describe_adapters(router: Router) -> list[dict[str, Any]]:
    """Every adapter of a started router, by name."""
    return [describe_adapter(router.adapters[name]) for name in sorted(router.adapters)]
