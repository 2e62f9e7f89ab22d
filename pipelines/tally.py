"""What one job survived or contained: object-storage requests it retried, and shards it could not finish.

A job in this process keeps a `Tally` here; a job on Ray keeps it in one actor that every worker tells (`tell`
waits for the call, a millisecond on a rare event, so that nothing is still on its way when the job adds up). The
job records the retries in its manifest and names the failed shards in its error; a rerun completes them.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any


class Tally:
    def __init__(self) -> None:
        self.retries: Counter[str] = Counter()
        self.failures: dict[str, str] = {}

    def retried(self, kind: str) -> None:
        """One request of `kind` (`storage.REQUEST_KINDS`) was sent again."""
        self.retries[kind] += 1

    def failed(self, shard: str, reason: str) -> None:
        """`shard` will not be committed in this run; the first reason given is kept."""
        self.failures.setdefault(shard, reason)

    def totals(self) -> tuple[dict[str, int], dict[str, str]]:
        return dict(self.retries), dict(self.failures)


def tell(tally: Any, method: str, *args: Any) -> None:
    """Call `method` of `tally`: a `Tally` here, or a Ray actor of one (None: nobody is counting)."""
    if tally is None:
        return
    call = getattr(tally, method)
    if not hasattr(call, "remote"):
        call(*args)
        return
    import ray

    with contextlib.suppress(ray.exceptions.RayError):  # the job is ending (its actor is gone): nobody counts
        ray.get(call.remote(*args))
