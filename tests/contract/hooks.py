"""Schemathesis hooks of the control plane's contract test (tests/it/contract.rs).

The run signs in as a platform admin and generates calls to every operation, destructive
ones included. These hooks keep it from acting on that very account (its password, its
sessions, its roles, disabling or deleting it): the run would lock itself out and every
later call would be a 401. Everything else, other accounts included, is fair game.
"""

import os

import schemathesis

ADMIN = os.environ["CONTRACT_ADMIN_ID"]


def _names_the_admin(value):
    if isinstance(value, dict):
        return any(_names_the_admin(v) for v in value.values())
    if isinstance(value, list):
        return any(_names_the_admin(v) for v in value)
    return value == ADMIN


@schemathesis.hook
def filter_case(context, case):
    return not (
        _names_the_admin(case.path_parameters or {})
        or _names_the_admin(case.body if isinstance(case.body, (dict, list)) else None)
    )
