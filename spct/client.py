"""Clients of an spct reward server (`python -m spct.serve`): `Client` and `AsyncClient`.

    from spct.client import Client
    grm = Client("http://127.0.0.1:8000")              # token: SPCT_SERVE_TOKEN unless given
    reply = grm.score("What is 17 * 3?", ["51", "41"], k=4)
    reply["unit_rewards"]                               # per response, on [0, 1]

Both retry what a later attempt can fix (the server busy or restarting: 502, 503, 504, 429, a
refused or dropped connection), waiting the server's Retry-After or an exponential backoff
with jitter, up to `retries` times; a refusal of the request itself (4xx, 500) is raised at once
as `ServerError`, with the field the server named. Only httpx and the standard library: a
trainer's process needs nothing else of spct to use them.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx

TOKEN_ENV = "SPCT_SERVE_TOKEN"
RETRY_STATUS = frozenset({429, 502, 503, 504})
MAX_WAIT_S = 30.0


class ServerError(RuntimeError):
    """The server refused a request (or kept failing it): `status`, `field` (what it named)."""

    def __init__(self, status: int | None, message: str, field: str | None = None) -> None:
        where = f" ({field})" if field else ""
        super().__init__(f"spct reward server: {status or 'no reply'}{where}: {message}")
        self.status, self.field, self.message = status, field, message


def score_body(
    query: str | None = None,
    responses: Sequence[str] = (),
    *,
    conversation: Sequence[dict[str, str]] | None = None,
    k: int | None = None,
    temperature: float | None = None,
    meta: bool | None = None,
    group: bool | str | None = None,
    group_size: int | None = None,
) -> dict[str, Any]:
    """One /score request (also an item of /batch_score): a `query` or a `conversation`, the
    responses, and the settings left to the server's defaults when None."""
    if (query is None) == (conversation is None):
        raise ValueError("give either query or conversation")
    body: dict[str, Any] = {"query": query} if query is not None else {"conversation": list(conversation)}
    body["responses"] = list(responses)
    options = {"k": k, "temperature": temperature, "meta": meta, "group": group, "group_size": group_size}
    body.update({key: value for key, value in options.items() if value is not None})
    return body


class _Base:
    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0, retries: int = 5,
                 backoff_s: float = 1.0) -> None:
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s

    def _wait(self, attempt: int, reply: httpx.Response | None) -> float:
        after = reply.headers.get("retry-after") if reply is not None else None
        if after is not None and after.isdigit():
            return min(float(after), MAX_WAIT_S)
        return min(self.backoff_s * 2**attempt, MAX_WAIT_S) * random.uniform(0.5, 1.0)

    def _outcome(self, reply: httpx.Response | None, error: Exception | None, attempt: int) -> Any:
        """The reply's JSON; None to retry; else raises."""
        if reply is not None and reply.status_code == 200:
            return reply.json()
        retry = error is not None or (reply is not None and reply.status_code in RETRY_STATUS)
        if retry and attempt < self.retries:
            return None
        if reply is None:
            raise ServerError(None, f"{type(error).__name__}: {error}") from error
        try:
            body = reply.json()
            message, field = body.get("error", reply.text), body.get("field")
        except ValueError:
            message, field = reply.text, None
        raise ServerError(reply.status_code, message, field)


class Client(_Base):
    """Synchronous client; thread-safe (one connection pool), also a context manager."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0, retries: int = 5,
                 backoff_s: float = 1.0) -> None:
        super().__init__(url, token, timeout, retries, backoff_s)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(self.retries + 1):
            reply, error = None, None
            try:
                reply = self._http.request(method, path, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as e:
                error = e
            result = self._outcome(reply, error, attempt)
            if result is not None:
                return result
            time.sleep(self._wait(attempt, reply))
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def score(self, query: str | None = None, responses: Sequence[str] = (), **options: Any) -> dict[str, Any]:
        """POST /score; `options` as in `score_body` (conversation, k, temperature, meta, group, group_size)."""
        return self._call("POST", "/score", score_body(query, responses, **options))

    def batch_score(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST /batch_score with `score_body` dicts; the replies in the same order."""
        return self._call("POST", "/batch_score", {"items": list(items)})["results"]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client, for reward functions a trainer awaits (veRL's, TRL's async ones).
    Send many requests at once (`asyncio.gather`): the server batches them."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0, retries: int = 5,
                 backoff_s: float = 1.0) -> None:
        super().__init__(url, token, timeout, retries, backoff_s)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout,
                                       limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(self.retries + 1):
            reply, error = None, None
            try:
                reply = await self._http.request(method, path, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as e:
                error = e
            result = self._outcome(reply, error, attempt)
            if result is not None:
                return result
            await asyncio.sleep(self._wait(attempt, reply))
        raise AssertionError("unreachable")

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/health")

    async def score(self, query: str | None = None, responses: Sequence[str] = (), **options: Any) -> dict[str, Any]:
        return await self._call("POST", "/score", score_body(query, responses, **options))

    async def batch_score(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return (await self._call("POST", "/batch_score", {"items": list(items)}))["results"]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
