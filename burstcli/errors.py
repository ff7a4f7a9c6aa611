"""One exception tree for everything burstq expects to go wrong.

    BurstError                 exit 2 unless stated; the CLI prints "Error: ..." once
    ├── UsageError             bad options or configuration (nothing sent)
    ├── InputError             missing or unreadable INPUT, or INPUT changed under the run
    ├── OutputError            OUTPUT cannot be written, or is not burstq's to touch
    ├── OutputLocked           another burstq run is writing the same OUTPUT
    ├── ResumeMismatch         OUTPUT was written from another input or other options
    ├── FatalProviderError     auth / insufficient_quota / a wait past --max-wait / no answer:
    │                          every further call now would fail or wait too (resumable)
    └── IncompleteRun          exit 1: some input lines ended the run without a record

Per-request failures (timeouts, 5xx, bad requests) are not exceptions at this level: they
become failed records. Budget stops and interrupts are outcomes, not errors.
"""

from __future__ import annotations


class BurstError(Exception):
    exit_code = 2


class UsageError(BurstError):
    pass


class InputError(BurstError):
    pass


class OutputError(BurstError):
    pass


class OutputLocked(BurstError):
    pass


class ResumeMismatch(BurstError):
    pass


class IncompleteRun(BurstError):
    """The last line of defence: the run ended with input lines that have no record."""

    exit_code = 1


STOPPED = (
    "the run stopped at once (every further call would fail the same way); fix it and rerun "
    "the same command to resume"
)


def missing_file(path: object) -> InputError:
    """The one wording, in every command, for a file that is not there."""
    return InputError(f"cannot read {path}: no such file")


class FatalProviderError(BurstError):
    def __init__(self, kind: str, message: str, advice: str = STOPPED) -> None:
        super().__init__(message)
        self.kind = kind
        self.advice = advice
