"""The failure taxonomy of a job: transient (retried with backoff, then quarantined) or permanent.

Transient: the input is fine but something around it is not, for now: a model backend that does
not answer (`BackendError`: Triton down, a deadline missed), the journal (`JournalError`), a full
or failing disk (`SpoolFull`, `OSError`), a time budget (`TimeoutError`, `JobTimedOut`). The job
goes back to the queue, not to be claimed before `backoff(attempts)`; after `max_attempts` claims
it is quarantined. Permanent: the input cannot be analysed (an undecodable image, a header over
the decode budget, a model that rejects it, a route or model version gone): the job fails at once
with its reason. Reasons never quote tag values: the sidecar's own errors (and backends') carry
messages this code wrote; any other exception is named by its type and the stage it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.backends import BackendError
from sidecar.errors import JournalError, SidecarError, SpoolFull


class JobTimedOut(SidecarError):
    """A job ran past its time budget (the worker process running it was replaced)."""


class WorkerDied(SidecarError):
    """The worker process running a job exited under it (killed, out of memory, crashed)."""


class BudgetExceeded(SidecarError):
    """The job's input is over its decoded-size budget: permanent, the input cannot be analysed here."""


TRANSIENT: tuple[type[BaseException], ...] = (
    BackendError, JournalError, SpoolFull, OSError, TimeoutError, JobTimedOut, WorkerDied,
)


def is_transient(exc: BaseException) -> bool:
    """True when a retry may succeed without anyone changing the input."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, BudgetExceeded)


def describe(exc: BaseException, stage: str = "") -> str:
    """A job's failure reason, safe to store and show: no tag values, no patient data."""
    name = type(exc).__name__
    if isinstance(exc, (SidecarError, BackendError)):
        return f"{name}: {exc}"[:500]
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno

        return f"{name}: {errno.errorcode.get(exc.errno, exc.errno)}" + (f" in {stage}" if stage else "")
    return f"{name} in {stage}" if stage else name


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff `initial_s * 2**(attempt-1)` capped at `max_s`; quarantine after `max_attempts` claims."""

    max_attempts: int = 4
    initial_s: float = 2.0
    max_s: float = 120.0

    def backoff_s(self, attempts: int) -> float:
        return float(min(self.max_s, self.initial_s * 2 ** max(0, attempts - 1)))
