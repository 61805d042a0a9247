"""The JSON contracts of the product: image events in, findings and dead letters out.

The schema files in the repository's ``schemas/`` folder are the single source of
truth; this module only loads and applies them with the ``jsonschema`` library.

Two readings of one file (schemas/README.md says why): as written, the contract a
consumer holds documents to, open for additive change within v1; and ``strict``, what
the job itself may emit, derived from the same file by closing every object to its
declared properties and every open code field to its ``x-known-values``.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import jsonschema
import referencing

IMAGE_EVENT = "image_event.v1.json"
FINDING = "finding.v1.json"
DEAD_LETTER = "dead_letter.v1.json"
MODEL_METADATA = "model_metadata.v1.json"
# The DICOM gateway's notice that a series stopped growing (its own topic, not events).
SERIES_COMPLETE = "series_complete.v1.json"
# An open code field lists the codes this version knows (and emits) under this keyword.
KNOWN_VALUES = "x-known-values"

# streaming/, whose installed copies carry the schemas (setup.py maps them there).
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Installed copies carry the schemas inside the package (setup.py maps them there);
# a source checkout reads them from the top-level folder.
_SCHEMA_DIRS = (_PACKAGE_DIR / "schemas", _PACKAGE_DIR.parent / "schemas")


def schema_dir() -> Path:
    for candidate in _SCHEMA_DIRS:
        if (candidate / IMAGE_EVENT).is_file():
            return candidate
    raise FileNotFoundError(
        f"schema files not found in {', '.join(map(str, _SCHEMA_DIRS))}; "
        "reinstall the package (pip install -e .)")


@functools.cache
def _schemas() -> dict[str, dict]:
    directory = schema_dir()
    return {name: json.loads((directory / name).read_text())
            for name in (IMAGE_EVENT, FINDING, DEAD_LETTER, MODEL_METADATA, SERIES_COMPLETE)}


def schema(name: str) -> dict:
    """The parsed schema document (a copy: callers may not change the contract)."""
    return json.loads(json.dumps(_schemas()[name]))


@functools.cache
def validator(name: str, strict: bool = False) -> jsonschema.protocols.Validator:
    """A validator for one schema file, with formats (date-time, uuid) checked;
    ``strict``: what the job may emit (see the module's docstring)."""
    schemas = _schemas()
    registry = referencing.Registry().with_resources(
        (schema["$id"], referencing.Resource.from_contents(schema))
        for schema in schemas.values())
    schema = schemas[name]
    base = jsonschema.validators.validator_for(schema)
    base.check_schema(schema)
    if strict:
        schema = _strict(schema)
        base.check_schema(schema)
    cls = jsonschema.validators.extend(base, {"pattern": _ecma_pattern})
    return cls(schema, registry=registry, format_checker=base.FORMAT_CHECKER)


def _strict(node):
    """A copy of a schema with objects closed to their properties and open codes to the
    known ones."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    strict = {key: _strict(value) for key, value in node.items()}
    if "properties" in strict and "additionalProperties" not in strict:
        strict["additionalProperties"] = False
    if KNOWN_VALUES in strict:
        strict["enum"] = list(strict[KNOWN_VALUES])
    return strict


def _ecma_pattern(validator, pattern: str, instance, schema):
    """JSON Schema's ``pattern`` with ECMA-262 anchors.

    jsonschema applies patterns with Python's ``re``, whose ``$`` also matches before a
    final newline: "1.2.3\n" would pass a UID pattern and travel into keys and findings.
    """
    if validator.is_type(instance, "string") and not _python_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _python_regex(pattern: str) -> re.Pattern:
    # Only unescaped "$" (an anchor in every pattern of ours) becomes "\Z".
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def errors(name: str, document: object, *, strict: bool = False) -> list[str]:
    """Every violation of the named schema, as 'path: message' lines (empty when valid).

    ``strict=True`` checks what the job emits: nothing undeclared, only known codes.
    Messages name the offending field and rule; jsonschema echoes offending
    values, so callers that may hold patient identity use ``violated_fields``.
    """
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(validator(name, strict).iter_errors(document), key=str)]


def violated_fields(name: str, document: object) -> list[str]:
    """Which fields break which rule, without the values (safe to log and to dead-letter)."""
    found = set()
    for error in validator(name).iter_errors(document):
        where = "/".join(map(str, error.absolute_path)) or "(root)"
        if error.validator in ("required", "additionalProperties"):
            # The field named by the error is the problem; its value is not shown.
            found.add(f"{where}: {error.validator} ({_field_names(error)})")
        else:
            found.add(f"{where}: {error.validator}")
    return sorted(found)


def _field_names(error: jsonschema.ValidationError) -> str:
    if error.validator == "required":
        instance = error.instance if isinstance(error.instance, dict) else {}
        return ", ".join(sorted(f for f in error.validator_value if f not in instance))
    allowed = set(error.schema.get("properties", {}))
    instance = error.instance if isinstance(error.instance, dict) else {}
    # Unknown field names are sender-chosen strings; show at most a count.
    return f"{len(set(instance) - allowed)} unknown field(s)"
