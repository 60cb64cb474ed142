"""Shared glue of the command-line scripts: logging set-up and one-line errors for people."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from pathlib import Path

from cmpc.errors import CmpcError


def friendly_errors(main):
    """Run ``main``; a :class:`CmpcError` becomes ``error: <message>`` on stderr and exit status 2, and so does
    a file-system refusal (permission denied, no space left, ...) that no loader anticipated."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except CmpcError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except OSError as err:
            if err.errno is None or err.filename is None:  # not a file-system error on a named file
                raise
            print(f"error: {err.strerror}: {err.filename}; check the path, its permissions and the free disk "
                  f"space", file=sys.stderr)
            sys.exit(2)

    return wrapper


def one_line_reason(err: BaseException) -> str:
    """The first line of ``err``'s message; prefixed with its type unless it is one of our errors (a
    :class:`CmpcError` already says what to do)."""
    text = str(err).strip().splitlines()
    return text[0] if isinstance(err, CmpcError) and text else f"{type(err).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def failure_note(run_dir, name: str = "error.txt"):
    """Write the one-line reason of an exception leaving the block to ``run_dir/name``, then re-raise it.

    A sweep reader (``cmpc.ablation``) tells a failed job from an unfinished one by this file.
    """
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - recorded, then re-raised unchanged
        reason = one_line_reason(err)
        if not (isinstance(err, SystemExit) and err.code in (0, None)):
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / name).write_text(reason + "\n")
        raise


def quiet_third_party_logs() -> None:
    for name in ("matplotlib", "PIL", "h5py", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
