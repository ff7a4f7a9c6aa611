"""One exception tree for everything burstq expects to go wrong.

    BurstError                 exit 2 unless stated; the CLI prints "Error: ..." once
    ├── UsageError             bad options or configuration (nothing sent)
    ├── InputError             missing or unreadable INPUT (nothing sent)
    ├── ResumeMismatch         OUTPUT was written from another input or other options
    └── FatalProviderError     auth / insufficient_quota: every further call would fail too

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


class ResumeMismatch(BurstError):
    pass


class FatalProviderError(BurstError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
