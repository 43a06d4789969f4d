"""Request coalescing: the jobs of concurrent requests gathered into one engine batch.

Every route hands its validated jobs to one `Batcher`. The batcher waits `window_s` after the
first job of a batch for others to arrive (or less, once `max_batch_prompts` GRM prompts are
waiting), then sends everything that is ready to the scorer as one call per (k, temperature,
meta), and answers each job with its own result. While a batch is on the engines, the next
one gathers; so under load the batches grow by themselves and the engines stay busy.

Grouped jobs (the same `group` key and sampling settings: a prompt's rollouts sent one per
request, as OpenRLHF and veRL send them) are merged into one item, judged in one GRM prompt.
With a `group_size` the group is ready when that many responses have arrived, or when
`group_window_s` has passed since its first one (it is then judged with the responses it has);
without one, it holds what arrives within the batch window. A group larger than
`max_responses` is cut into consecutive parts, each judged alone; a job's responses always stay
in one part.

Pure asyncio: no engine, Ray or HTTP import. The scorer and the prompt check are plain
callables, run in a thread so that the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from spct.item import Item

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[Item], int, float, bool], list[dict[str, Any]]]
CheckFn = Callable[[Item], "str | None"]


@dataclass(frozen=True)
class ScoreJob:
    """One validated scoring job: an item (or, with `group`, a share of a group's responses)."""

    item: Item
    k: int
    temperature: float
    meta: bool
    group: str | None = None  # jobs with the same group key and settings are judged together
    group_size: int | None = None  # responses the group will have: it goes once complete

    @property
    def settings(self) -> tuple[int, float, bool]:
        return self.k, self.temperature, self.meta


class Unscorable(Exception):
    """A job the GRM cannot judge (a merged group's prompt too long for the context)."""


class QueueFull(Exception):
    """More GRM prompts are waiting than `max_queue_prompts`; `retry_after` in seconds."""

    def __init__(self, waiting: int, limit: int, retry_after: int) -> None:
        super().__init__(f"{waiting} GRM prompts are waiting (the limit is {limit}); retry in {retry_after} s")
        self.retry_after = retry_after


def content_id(item: Item) -> str:
    """A digest of what the GRM sees: the same item gets the same sampling seeds (and so the same
    scores) whatever else shares its batch."""
    text = json.dumps([item.conversation, item.responses], ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def share_of(result: dict[str, Any], at: int, n: int) -> dict[str, Any]:
    """The part of a group's result that belongs to responses at..at+n-1."""

    def cut(values: list[Any] | None) -> list[Any] | None:
        return None if values is None else values[at : at + n]

    return dict(result, rewards=cut(result["rewards"]), scores=[cut(s) for s in result["scores"]],
                group_size=len(result["rewards"]))


@dataclass
class _Entry:
    job: ScoreJob
    future: asyncio.Future
    arrived: float


@dataclass
class _Unit:
    """What goes to the scorer as one item: a lone job, or a group's jobs merged."""

    entries: list[_Entry]
    grouped: bool
    fire_at: float  # when it should go even if the batch is not full
    prompts: int = 0

    @property
    def job(self) -> ScoreJob:
        return self.entries[0].job


@dataclass
class Batcher:
    """Gathers the jobs of concurrent requests into scorer calls (module docstring); one loop
    task per event loop, started by the first `submit`."""

    score: ScoreFn
    check: CheckFn
    window_s: float = 0.01
    group_window_s: float = 30.0
    max_batch_prompts: int = 256
    max_queue_prompts: int = 4096
    max_responses: int = 16
    _queue: list[_Entry] = field(default_factory=list)
    _wake: asyncio.Event | None = None
    _task: asyncio.Task | None = None
    _last_batch_s: float = 1.0

    async def submit(self, jobs: Sequence[ScoreJob], timeout_s: float | None = None) -> list[Any]:
        """Queue the jobs of one request; each result is a scorer dict or an `Unscorable`.

        Raises `QueueFull` (nothing queued) or `TimeoutError` (the jobs not yet started are
        withdrawn); a scorer error is raised as is.
        """
        self._start()
        waiting = self.waiting_prompts()
        incoming = sum(j.k for j in jobs)
        if waiting and waiting + incoming > self.max_queue_prompts:
            raise QueueFull(waiting, self.max_queue_prompts, max(1, math.ceil(self._last_batch_s)))
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        entries = [_Entry(job, loop.create_future(), now) for job in jobs]
        self._queue.extend(entries)
        self._wake.set()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(e.future for e in entries), return_exceptions=True), timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            self._withdraw(entries)
            raise
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Unscorable):
                raise r
        return results

    def waiting_prompts(self) -> int:
        return sum(e.job.k for e in self._queue)

    def _withdraw(self, entries: list[_Entry]) -> None:
        gone = {id(e) for e in entries}
        self._queue = [e for e in self._queue if id(e) not in gone]
        for e in entries:
            if not e.future.done():
                e.future.cancel()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def _units(self, now: float) -> tuple[list[_Unit], float | None]:
        """The queue as units ready to go (in arrival order), and when the next incomplete group
        becomes ready."""
        units: list[_Unit] = []
        groups: dict[tuple, list[_Entry]] = {}
        for e in self._queue:
            if e.job.group is None:
                units.append(_Unit([e], False, e.arrived + self.window_s, e.job.k))
            else:
                groups.setdefault((e.job.group, e.job.settings), []).append(e)
        later = None
        for entries in groups.values():
            first = entries[0]
            size = sum(e.job.item.n for e in entries)
            expected = max((e.job.group_size or 0) for e in entries)
            deadline = first.arrived + self.group_window_s
            if not expected:  # what arrives within the batch window
                fire_at = first.arrived + self.window_s
            elif size >= expected:
                fire_at = min(entries[-1].arrived + self.window_s, deadline)
            elif now >= deadline:
                fire_at = deadline
            else:
                later = deadline if later is None else min(later, deadline)
                continue
            units.append(_Unit(entries, True, fire_at, first.job.k * len(self._parts(entries))))
        units.sort(key=lambda u: u.entries[0].arrived)
        return units, later

    def _parts(self, entries: list[_Entry]) -> list[list[_Entry]]:
        """A group's jobs cut into consecutive parts of at most `max_responses` responses."""
        parts: list[list[_Entry]] = [[]]
        size = 0
        for e in entries:
            if parts[-1] and size + e.job.item.n > self.max_responses:
                parts.append([])
                size = 0
            parts[-1].append(e)
            size += e.job.item.n
        return parts

    async def _loop(self) -> None:
        """Batch and score until the server stops. An error of the loop's own (not a scorer's or a
        check's: those reach their batch's requests in `_run`) fails every waiting request at once,
        logged, and the loop goes on: no request is left to wait for its timeout."""
        while True:
            try:
                await self._step()
            except Exception as e:  # noqa: BLE001 - reported to every waiting request, then go on
                log.exception("batcher: an unexpected error; the %d waiting request(s) get it", len(self._queue))
                waiting, self._queue = self._queue, []
                for entry in waiting:
                    _settle(entry.future, exc=e)

    async def _step(self) -> None:
        """Score one batch if one is ready, else wait until one may be."""
        now = time.monotonic()
        units, later = self._units(now)
        ready = sum(u.prompts for u in units)
        fire_at = min((u.fire_at for u in units), default=None)
        if units and (ready >= self.max_batch_prompts or fire_at <= now):
            batch, prompts = [], 0
            for u in units:
                if batch and prompts + u.prompts > self.max_batch_prompts:
                    break
                batch.append(u)
                prompts += u.prompts
            taken = {id(e) for u in batch for e in u.entries}
            self._queue = [e for e in self._queue if id(e) not in taken]
            started = time.monotonic()
            try:
                await self._run(batch)
            except Exception as e:  # e.g. the prompt check failed: the batch's requests learn it
                for unit in batch:
                    for entry in unit.entries:
                        _settle(entry.future, exc=e)
            self._last_batch_s = time.monotonic() - started
            return
        wake_at = min(t for t in (fire_at, later) if t is not None) if (units or later) else None
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), None if wake_at is None else max(0.0, wake_at - now))
        except TimeoutError:
            pass

    async def _run(self, batch: list[_Unit]) -> None:
        """Score a batch; every entry's future gets its result or the error."""
        by_settings: dict[tuple, list[tuple[Item, list[tuple[_Entry, int]]]]] = {}
        for unit in batch:
            parts = self._parts(unit.entries) if unit.grouped else [unit.entries]
            for part in parts:
                part = [e for e in part if not e.future.done()]  # withdrawn meanwhile
                if not part:
                    continue
                item, shares = part[0].job.item, [(part[0], 0)]
                if unit.grouped:
                    responses, shares = [], []
                    for e in part:
                        shares.append((e, len(responses)))
                        responses += e.job.item.responses
                    first = part[0].job.item
                    item = Item(first.conversation, responses, [0.0] * len(responses), meta=first.meta)
                    if len(part) > 1:
                        reason = await run_in_threadpool(self.check, item)
                        if reason is not None:
                            for e, _ in shares:
                                _settle(e.future, exc=Unscorable(reason))
                            continue
                by_settings.setdefault(unit.job.settings, []).append((item, shares))
        for (k, temperature, meta), work in by_settings.items():
            try:
                results = await run_in_threadpool(self.score, [item for item, _ in work], k, temperature, meta)
            except Exception as e:  # every job of the call learns it; the loop goes on
                for _, shares in work:
                    for entry, _ in shares:
                        _settle(entry.future, exc=e)
                continue
            for (_, shares), result in zip(work, results, strict=True):
                for entry, at in shares:
                    share = share_of(result, at, entry.job.item.n) if entry.job.group is not None else result
                    _settle(entry.future, share)


def _settle(future: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
