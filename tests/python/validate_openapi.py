"""Validates an OpenAPI document with openapi-spec-validator, as client generators and API
tools would read it. Prints the errors, one per line; exits 1 when there is any.

Usage: validate_openapi.py FILE
"""

import json
import sys

from openapi_spec_validator import OpenAPIV31SpecValidator


def main(path: str) -> None:
    with open(path, encoding="utf-8") as file:
        spec = json.load(file)
    errors = [str(error).splitlines()[0] for error in OpenAPIV31SpecValidator(spec).iter_errors()]
    for error in errors:
        print(error)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main(sys.argv[1])
