"""Reading a request: its JSON body and query parameters, checked against JSON Schemas.

The schemas are the ones the OpenAPI document publishes (api/schemas.py), so the
document and the checks cannot drift apart. `jsonschema` checks them (Draft 2020-12);
this module only turns its first error into a 4xx ApiError naming the field.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from flask import request
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

from newsletter.web.api.errors import ApiError

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=(ValueError, OverflowError))
def _date_time(value: object) -> bool:
    """RFC 3339 with a zone, and a real moment (not 30 February, not before year 1 in UTC)."""
    if not isinstance(value, str):
        return True
    if not RFC3339.fullmatch(value):
        return False
    datetime.fromisoformat(value.upper()).astimezone(UTC)
    return True


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_input", message, field=field or None)


def _field(error: ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    name = ""
    if error.validator == "required":
        name = next(n for n in error.validator_value if n not in error.instance)
    elif error.validator == "additionalProperties":
        name = next(n for n in error.instance if n not in error.schema.get("properties", {}))
    return f"{path}.{name}" if path and name else path or name


def _message(error: ValidationError) -> str:
    rule, value = error.validator, error.validator_value
    if rule == "type":
        return f"expected {' or '.join([value] if isinstance(value, str) else value)}"
    if rule == "enum":
        return f"must be one of: {', '.join(str(v) for v in value if v is not None)}"
    if rule == "minLength":
        return "must not be empty" if value == 1 else "too short"
    if rule == "format" and value == "date-time":
        return "not an RFC 3339 date-time (e.g. 2026-11-23T07:00:00+01:00)"
    return {
        "required": "required",
        "additionalProperties": "unknown field",
        "minProperties": "nothing to change: give at least one field",
        "maxLength": f"at most {value} characters",
        "maxItems": f"at most {value} items",
        "uniqueItems": "items must be unique",
        "minimum": f"must be at least {value}",
        "maximum": f"must be at most {value}",
        "pattern": f"must match {value}",
        "const": f"must be {value!r}",
    }.get(rule, error.message)


def _nul(value, field: str = "") -> str | None:
    """The field of the first string that holds a NUL character, if any."""
    if isinstance(value, str):
        return field if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _nul(item, f"{field}[{key}]" if isinstance(key, int) else f"{field}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def validate(value, schema: dict, field: str = "") -> None:
    """Raise ApiError(422) when `value` does not satisfy `schema`."""
    error = best_match(Draft202012Validator(schema, format_checker=FORMATS).iter_errors(value))
    if error is not None:
        name = _field(error)
        raise invalid(f"{field}.{name}" if field and name else field or name, _message(error))
    bad = _nul(value, field)
    if bad is not None:
        raise invalid(bad, "NUL character not allowed")


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
