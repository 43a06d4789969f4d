"""The FastAPI app (`make_app`): authorization, body limits, the routes; and a server that
runs it from a thread (`BackgroundServer`)."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from spct.serve.requests import (
    Limits,
    OpenRLHFBatch,
    RequestError,
    ScoreJob,
    openrlhf_lists,
    parse_query_options,
    parse_score_request,
    read_json_bytes,
    score_response,
)
from spct.serve.scorer import Scorer

log = logging.getLogger("spct.serve")

class Gate:
    """What every request passes before its fields are read: the token (compared in constant
    time) and the body size (refused before it is read when declared, else while reading)."""

    def __init__(self, token: str | None, max_body_bytes: int) -> None:
        self.secret = token.encode() if token else None
        self.max_body_bytes = max_body_bytes

    def authorize(self, request: Request) -> None:
        if self.secret is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise RequestError(401, "Authorization", "expected 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(value.strip().encode(), self.secret):
            raise RequestError(401, "Authorization", "wrong token")

    async def read_json(self, request: Request) -> Any:
        self.authorize(request)
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, "Content-Length", f"not a byte count: {declared!r}")
            if int(declared) > limit:
                raise RequestError(413, "body", f"{declared} bytes; the limit is {limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, "body", f"more than the limit of {limit} bytes")
        return read_json_bytes(bytes(body))


async def score_jobs(scorer: Scorer, jobs: list[ScoreJob], k_meta: int | None) -> list[dict[str, Any]]:
    """Score jobs sharing (k, temperature, meta) in one call each; results in input order, each
    with the `k_meta` its vote kept (`k_meta` capped at k, when the meta RM chose)."""
    groups: dict[tuple[int, float, bool], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault((job.k, job.temperature, job.meta), []).append(i)
    out: list[dict[str, Any]] = [{} for _ in jobs]
    for (k, temp, meta), members in groups.items():
        kept = min(k_meta, k) if meta and k_meta is not None else None
        try:
            results = await run_in_threadpool(scorer.score, [jobs[i].item for i in members], k, temp, kept, meta)
        except Exception as e:
            # The details (Ray's actor ids, PIDs, addresses, tracebacks) go to the server's log
            # only; the client learns what happened.
            log.exception("scoring failed")
            from spct.cluster import actor_fault

            if actor_fault(e) is not None:
                raise RequestError(503, None, "the GRM's engine or the meta RM has stopped; this server cannot "
                                   "score until it is restarted") from None
            raise RequestError(500, None, f"scoring failed ({type(e).__name__}); see the server's log") from None
        for i, result in zip(members, results, strict=True):
            out[i] = dict(result, k_meta=kept)
    return out


def make_app(
    scorer: Scorer,
    *,
    token: str | None = None,
    max_body_bytes: int,
    max_responses: int,
    max_chars_per_text: int,
    default_k: int,
    max_k: int,
    max_items: int,
    temperature: float,
    k_meta: int | None,
    end_markers: Sequence[str],
    openrlhf_group: bool = False,
) -> FastAPI:
    """The FastAPI app. With a `token`, every endpoint wants `Authorization: Bearer <token>`.
    `openrlhf_group` is /openrlhf's default mode (a request may set `group` in its URL)."""
    limits = Limits(
        max_body_bytes,
        max_items,
        max_responses,
        max_chars_per_text,
        default_k,
        max_k,
        temperature,
        k_meta,
    )
    gate = Gate(token, max_body_bytes)
    markers = list(end_markers)
    # The schema pages would answer without the token; the endpoints are documented in docs/.
    app = FastAPI(title="spct reward server", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message, "field": exc.field}, exc.status, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "field": None}, exc.status_code, exc.headers)

    def checked(job: ScoreJob, field_name: str) -> ScoreJob:
        reason = scorer.check(job.item)
        if reason is not None:
            raise RequestError(413, field_name, reason)
        return job

    async def run(jobs: list[ScoreJob]) -> list[dict[str, Any]]:
        return await score_jobs(scorer, jobs, limits.k_meta)

    @app.get("/health")
    async def health(request: Request) -> Any:
        gate.authorize(request)
        probe = getattr(scorer, "health", None)
        problems = await run_in_threadpool(probe) if probe else []
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, 503)
        return {
            "status": "ok",
            "model": scorer.model,
            "meta_rm": scorer.has_meta,
            "template": scorer.template,
            "score_range": [scorer.low, scorer.high],
            "default_k": limits.default_k,
        }

    @app.post("/score")
    async def score(request: Request) -> dict[str, Any]:
        body = await gate.read_json(request)
        job = checked(parse_score_request(body, "", limits, scorer.has_meta), "responses")
        (result,) = await run([job])
        return score_response(result, job.k)

    @app.post("/batch_score")
    async def batch_score(request: Request) -> dict[str, Any]:
        body = await gate.read_json(request)
        if not isinstance(body, dict) or "items" not in body:
            raise RequestError(422, "items", 'missing: expected {"items": [score requests]}')
        extra = sorted(set(body) - {"items"})
        if extra:
            raise RequestError(422, extra[0], "unknown field; expected only 'items'")
        items = body["items"]
        if not isinstance(items, list) or not items:
            raise RequestError(422, "items", "expected a non-empty list of score requests")
        if len(items) > limits.max_items:
            raise RequestError(413, "items", f"{len(items)} items; the limit is {limits.max_items}")
        jobs = [
            checked(
                parse_score_request(it, f"items[{i}].", limits, scorer.has_meta),
                f"items[{i}].responses",
            )
            for i, it in enumerate(items)
        ]
        results = await run(jobs)
        return {"results": [score_response(r, j.k) for r, j in zip(results, jobs, strict=True)]}

    @app.post("/openrlhf")
    async def openrlhf(request: Request) -> dict[str, Any]:
        body = await gate.read_json(request)
        k, temp, meta, group = parse_query_options(request, limits, scorer.has_meta, openrlhf_group)
        queries, prompts = openrlhf_lists(body, limits)
        batch = OpenRLHFBatch(queries, prompts, markers, limits, group)
        jobs = []
        for members, item in batch.groups:
            reason = scorer.check(item)
            if reason is None:
                jobs.append((members, ScoreJob(item, k, temp, meta)))
            else:
                batch.unscore(members, reason)
        for i, reason in batch.unscored.items():
            log.warning("/openrlhf: query %d gets reward 0 unscored: %s", i, reason)
        results = await run([job for _, job in jobs])
        for (members, _), result in zip(jobs, results, strict=True):
            batch.reward(members, result, scorer.low, scorer.high)
        return batch.reply()

    return app


class _Server(uvicorn.Server):
    """uvicorn's server, telling where it listens once the socket is bound (port 0 included)."""

    @property
    def url(self) -> str:
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("listening on %s", self.url)


class BackgroundServer:
    """Serve an app from a daemon thread: for tests, or a trainer embedding the reward server.

    `start()` returns the URL once the socket accepts connections; `stop()` (or leaving the
    `with` block) shuts uvicorn down and joins the thread.
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        self.server = _Server(
            uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, name="spct-serve", daemon=True)

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread exited before listening (see its log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start listening within {timeout} s")
            time.sleep(0.01)
        return self.server.url

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
