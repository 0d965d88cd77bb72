"""Reading a request: its JSON body and query parameters, checked against JSON Schemas.

The schemas are the ones the OpenAPI document publishes (api/schemas.py), so the
document and the checks cannot drift apart. The validator covers the subset of
JSON Schema those schemas use: type, enum, min/maxLength, minimum/maximum, items,
maxItems, uniqueItems, properties, required, additionalProperties: false, and the
date-time format. Every failure is a 4xx ApiError naming the field.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from flask import request

from newsletter.web.api.errors import ApiError

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_input", message, field=field or None)


def validate(value, schema: dict, field: str = "") -> None:
    """Raise ApiError(422) when `value` does not satisfy `schema`."""
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(JSON_TYPES[t](value) for t in types):
            raise invalid(field, f"expected {' or '.join(types)}")
    if value is None:
        return
    if "const" in schema and value != schema["const"]:
        raise invalid(field, f"must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise invalid(field, f"must be one of: {', '.join(map(str, schema['enum']))}")
    if isinstance(value, str):
        _validate_string(value, schema, field)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise invalid(field, f"must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise invalid(field, f"must be at most {schema['maximum']}")
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise invalid(field, f"at most {schema['maxItems']} items")
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
            raise invalid(field, "items must be unique")
        for index, item in enumerate(value):
            validate(item, schema.get("items", {}), f"{field}[{index}]")
    elif isinstance(value, dict):
        _validate_object(value, schema, field)


def _validate_string(value: str, schema: dict, field: str) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise invalid(field, "must not be empty" if schema["minLength"] == 1 else "too short")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise invalid(field, f"at most {schema['maxLength']} characters")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        raise invalid(field, f"must match {schema['pattern']}")
    if "\x00" in value:
        raise invalid(field, "NUL character not allowed")
    if schema.get("format") == "date-time":
        if not RFC3339.fullmatch(value):
            raise invalid(field, "not an RFC 3339 date-time (e.g. 2026-11-23T07:00:00+01:00)")
        try:
            datetime.fromisoformat(value.upper()).astimezone(UTC)
        except (ValueError, OverflowError) as exc:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise invalid(field, "not a valid date or time") from exc


def _validate_object(value: dict, schema: dict, field: str) -> None:
    properties = schema.get("properties", {})
    prefix = f"{field}." if field else ""
    for name in schema.get("required", []):
        if name not in value:
            raise invalid(prefix + name, "required")
    if schema.get("additionalProperties") is False:
        for name in value:
            if name not in properties:
                raise invalid(prefix + name, "unknown field")
    for name, item in value.items():
        if name in properties:
            validate(item, properties[name], prefix + name)
    if schema.get("minProperties") and len(value) < schema["minProperties"]:
        raise invalid(field, "nothing to change: give at least one field")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def json_body(schema: dict) -> dict:
    """The request's JSON object, checked against `schema`: 415, 400 or 422 otherwise."""
    if not request.mimetype or not (request.mimetype == "application/json"
                                    or request.mimetype.endswith("+json")):
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    raw = request.get_data(cache=True)  # 413 here when the body is over the limit
    if not raw.strip():
        raise ApiError(400, "invalid_json", "The request body is empty; a JSON object is expected.")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    validate(data, schema)
    return data


def query_params(parameters: list[dict]) -> dict:
    """Query parameters (OpenAPI parameter objects) converted and checked; absent ones omitted.

    An operation without query parameters calls this with [] to refuse unknown ones."""
    known = {parameter["name"] for parameter in parameters}
    for name in request.args:
        if name not in known:
            raise ApiError(400, "invalid_query", "unknown query parameter", field=name[:100])
    values: dict = {}
    for parameter in parameters:
        name, schema = parameter["name"], parameter["schema"]
        raw_values = request.args.getlist(name)
        if not raw_values:
            if parameter.get("required"):
                raise ApiError(400, "invalid_query", "required", field=name)
            continue
        if len(raw_values) > 1:
            raise ApiError(400, "invalid_query", "give this parameter once", field=name)
        raw = raw_values[0]
        value: object = raw
        if schema.get("type") == "integer":
            try:
                value = int(raw, 10)
            except ValueError:
                raise ApiError(400, "invalid_query", "expected an integer", field=name) from None
        try:
            validate(value, schema, name)
        except ApiError as exc:
            raise ApiError(400, "invalid_query", exc.message, field=name) from None
        values[name] = value
    return values
