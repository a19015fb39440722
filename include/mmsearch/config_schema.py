"""How a setting is declared (`setting`: its section, description, type, choices and bounds,
written once) and its JSON Schema: what the trigger form shows and `RunConfig.check` enforces."""

from __future__ import annotations

import dataclasses
import operator


class ConfigError(ValueError):
    """A setting unknown, out of its range or of the wrong kind: one line saying which."""


# The trigger form's sections, in the order the form shows them (most used first).
SECTIONS = ("Training", "Data", "Registry", "Transform")


def setting(
    default,
    description: str,
    section: str,
    *,
    choices: tuple | None = None,
    optional: bool = False,
    items: type = str,
    fingerprint: bool = True,
    **bounds: float,
):
    """A RunConfig field with its description and allowed values, written once: the DAG's Params
    (the trigger form) and RunConfig.check are both built from this.

    `optional`: an empty value means "not set" (the form shows the field as not required).
    `items`: the type of a list setting's items (str or dict).
    `fingerprint`: whether the setting can change the model (part of a run's fingerprint: a
    registered version with the same fingerprint, data and code makes the run skip training).
    `bounds`: JSON Schema's minimum, maximum, exclusiveMinimum, exclusiveMaximum.
    """
    assert section in SECTIONS and set(bounds) <= set(BOUNDS), (section, bounds)
    metadata = {
        "description": description,
        "section": section,
        "choices": choices,
        "optional": optional,
        "items": items,
        "bounds": bounds,
        "fingerprint": fingerprint,
    }
    return dataclasses.field(default=default, metadata=metadata)


def training_setting(default, description: str, **options):
    return setting(default, description, "Training", **options)


def data_setting(default, description: str, **options):
    return setting(default, description, "Data", **options)


def registry_setting(default, description: str, **options):
    return setting(default, description, "Registry", **options)


def transform_setting(default, description: str, **options):
    return setting(default, description, "Transform", **options)


JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", tuple: "array", dict: "object"}
KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list"}
# JSON Schema's bounds a setting may carry: each with its test and the sign an error shows
BOUNDS = {
    "minimum": (operator.ge, "≥"),
    "maximum": (operator.le, "≤"),
    "exclusiveMinimum": (operator.gt, ">"),
    "exclusiveMaximum": (operator.lt, "<"),
}


def check_setting(field: dataclasses.Field, value) -> None:
    """The type, choices and bounds a setting's metadata declares."""
    meta, expected = field.metadata, type(field.default)
    if type(value) is not expected:
        raise ConfigError(f"{field.name} must be {KINDS[expected]}, not {value!r}")
    if expected is tuple and not all(isinstance(item, meta["items"]) for item in value):
        raise ConfigError(f"{field.name} must be a list of {JSON_TYPES[meta['items']]}s, not {list(value)!r}")
    if meta["choices"] and value not in meta["choices"] and not (meta["optional"] and value == ""):
        raise ConfigError(f"{field.name} must be one of {list(meta['choices'])}, not {value!r}")
    for key, bound in meta["bounds"].items():
        holds, sign = BOUNDS[key]
        if not holds(value, bound):
            raise ConfigError(f"{field.name} must be {sign} {bound}, not {value!r}")


def param_schema(field: dataclasses.Field) -> dict:
    """The JSON Schema of one setting, as Airflow's Param and trigger form take it."""
    meta = field.metadata
    json_type = JSON_TYPES[type(field.default)]
    schema = {
        "type": [json_type, "null"] if meta["optional"] else json_type,
        "description": meta["description"] + allowed_range(meta["bounds"]),
        "section": meta["section"],
        **meta["bounds"],
    }
    if meta["choices"]:
        schema["enum"] = list(meta["choices"]) + ([None] if meta["optional"] else [])
    if json_type == "array":
        schema["items"] = {"type": JSON_TYPES[meta["items"]]}
    return schema


def allowed_range(bounds: dict) -> str:
    """The bounds as the form shows them under the field (its number box says nothing, and moves
    a value typed out of range to the nearest bound as it loses focus)."""
    if not bounds:
        return ""
    return " Allowed: " + " and ".join(f"{BOUNDS[key][1]} {value}" for key, value in bounds.items()) + "."


def param_default(field: dataclasses.Field):
    """The form's default: an optional setting left empty is null (not a missing string)."""
    if field.metadata["optional"] and field.default == "":
        return None
    if isinstance(field.default, tuple):
        return [dict(item) if isinstance(item, dict) else item for item in field.default]
    return field.default
