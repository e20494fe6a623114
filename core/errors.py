"""User-facing errors.

Every mistake a user can make (bad config, unknown plugin, unreadable data, a
checkpoint that does not fit) raises an :class:`AdaptError` subclass carrying
what went wrong and how to fix it. The CLI prints it as one message and exits
with code 2; only ``--debug`` shows the traceback. Anything else that escapes
is a bug in adapt or in a plugin.
"""

from __future__ import annotations

import sys
from typing import Callable


class AdaptError(Exception):
    """A problem the user can fix; ``hint`` says how. A stage that fails after it
    measured something (a merge check, an export's parity) puts its report section
    in ``report``, so the run's report records why it stopped."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, *, report: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.report = report

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class ConfigError(AdaptError):
    """The config file or a ``--set`` override is invalid."""


class PluginError(AdaptError):
    """A plugin is unknown, registered twice, failed to import, or raised in a hook."""


class DataError(AdaptError):
    """The data cannot be read or does not fit the task."""


class CheckpointError(AdaptError):
    """Weights cannot be read or do not fit the model."""


class RunDirError(AdaptError):
    """The run directory is in a state the command cannot work with."""


class MergeError(AdaptError):
    """The merged model does not reproduce the adapted one: the method's merge is wrong."""


class ExportError(AdaptError):
    """The model could not be exported, or the exported file does not reproduce it."""


class Interrupted(AdaptError):
    """The user pressed Ctrl-C (SIGINT); what was finished is saved."""

    exit_code = 130


def run_or_report(write: Callable[[], object], done: str) -> int:
    """A data-set writer's command-line exit: ``done`` printed and 0, or the AdaptError's
    message (and hint) on stderr and 2, the code adapt's own commands use for user errors."""
    try:
        write()
    except AdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(done)
    return 0
