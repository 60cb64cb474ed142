"""Shared glue of the command-line scripts: logging set-up and one-line errors for people."""

from __future__ import annotations

import functools
import logging
import sys

from .errors import CmpcError


def friendly_errors(main):
    """Run ``main``; a :class:`CmpcError` becomes ``error: <message>`` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except CmpcError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def quiet_third_party_logs() -> None:
    for name in ("matplotlib", "PIL", "h5py"):
        logging.getLogger(name).setLevel(logging.WARNING)
