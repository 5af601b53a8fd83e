"""The one exception type for user errors (bad options, input files, output paths).

:class:`UsageError` is a ``ValueError`` (which configs and loaders already raise), so API callers that catch
``ValueError`` keep working; the command line prints its message on one line and exits with code 2.
Torch-free.
"""

from __future__ import annotations

__all__ = ["UsageError", "located"]


class UsageError(ValueError):
    """Something the user gave is wrong: an option, an input file, an output path. The message names the
    culprit (option, file and line or JSON path) and what was expected."""


def located(where: str, message: str) -> UsageError:
    """A :class:`UsageError` prefixed with where it happened (``file.jsonl:3``, ``c.json: $.nodes[2]``)."""
    return UsageError(f"{where}: {message}")
