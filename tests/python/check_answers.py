"""Checks recorded answers of an API against its OpenAPI 3.1 document: each body must be
valid (JSON Schema 2020-12, as jsonschema reads it) under the schema the document declares
for its operation and status. Prints one line per mismatch; exits 1 when there is any.

Usage: check_answers.py OPENAPI_FILE ANSWERS_FILE

ANSWERS_FILE holds a JSON list of {"method", "path" (the document's path template),
"status", "body"}.

Answers are held to what is declared: an object may carry only the properties its schema
names (unless the schema says otherwise), so a field added to an answer without its schema
is a mismatch too.
"""

import json
import sys

from jsonschema import Draft202012Validator


def _structured(schema) -> bool:
    """A schema of an object whose properties are declared (here or through a reference)."""
    return isinstance(schema, dict) and any(
        key in schema for key in ("$ref", "properties", "allOf", "oneOf", "anyOf")
    )


def closed(schema):
    """`schema` with every place a value is described closed to undeclared properties.

    Only the places of use are closed (the root, property values, items, map values), not
    the members of a composition: a flattened part (allOf), or the branch of a flattened
    enum (a oneOf inside an allOf member), must leave the other parts' properties to them.
    `unevaluatedProperties` sees through references and compositions (the properties of
    the branch that matched count), so a closed use of open components is exact.
    """
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: close_use(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = close_use(value)
        else:
            out[key] = closed(value)
    return out


def close_use(schema):
    schema = closed(schema)
    if _structured(schema) and "additionalProperties" not in schema:
        schema = dict(schema, unevaluatedProperties=False)
    return schema


def declared(doc: dict, method: str, path: str, status: int):
    """The schema of the JSON answer the document declares, or a reason it declares none."""
    operation = doc["paths"].get(path, {}).get(method.lower())
    if operation is None:
        return None, f"{method} {path} is not in the document"
    answer = operation["responses"].get(str(status))
    if answer is None:
        return None, f"{method} {path}: status {status} is not declared"
    schema = answer.get("content", {}).get("application/json", {}).get("schema")
    if not schema:
        return None, f"{method} {path} {status}: no JSON schema declared"
    return schema, None


def main(doc_path: str, answers_path: str) -> None:
    with open(doc_path, encoding="utf-8") as file:
        doc = json.load(file)
    with open(answers_path, encoding="utf-8") as file:
        answers = json.load(file)
    errors = []
    for answer in answers:
        method, path, status = answer["method"], answer["path"], answer["status"]
        schema, missing = declared(doc, method, path, status)
        if missing:
            errors.append(missing)
            continue
        # the components travel with the schema, so `#/components/...` references resolve
        components = closed(doc.get("components", {}))
        root = dict(close_use(schema), components=components)
        for error in Draft202012Validator(root).iter_errors(answer["body"]):
            where = "/".join(str(part) for part in error.absolute_path) or "(body)"
            errors.append(f"{method} {path} {status} at {where}: {error.message}")
    for error in errors:
        print(error)
    print(f"{len(answers)} answers checked, {len(errors)} mismatches")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
