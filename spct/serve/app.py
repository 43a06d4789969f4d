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

from spct.serve.batching import Batcher, QueueFull, ScoreJob, Unscorable
from spct.serve.requests import (
    Limits,
    OpenRLHFBatch,
    RequestError,
    openrlhf_lists,
    parse_query_options,
    parse_score_request,
    read_json_bytes,
    score_response,
)
from spct.serve.scorer import Scorer

log = logging.getLogger("spct.serve")
INLINE_PARSE_BYTES = 64 * 1024

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
        if len(body) > INLINE_PARSE_BYTES:  # a large body parses in a worker thread, off the event loop
            return await run_in_threadpool(read_json_bytes, bytes(body))
        return read_json_bytes(bytes(body))


def restart(scorer: Scorer) -> tuple[str, dict[str, str] | None]:
    """After an engine or the meta RM died under a request: restart what died (the scorer's
    `recover`, when it has one). The client's 503 says whether to retry or to restart the server."""
    recover = getattr(scorer, "recover", None)
    if recover is not None:
        try:
            restarted = recover()
        except Exception:
            log.exception("restarting the GRM's engines failed")
        else:
            log.warning("restarted after a failure: %s", ", ".join(restarted) or "nothing had died")
            return "the GRM's engine or the meta RM had stopped and was restarted; retry the request", \
                {"Retry-After": "1"}
    return "the GRM's engine or the meta RM has stopped; this server cannot score until it is restarted", None


def engine_call(scorer: Scorer, k_meta: int | None) -> Any:
    """The batcher's scoring function: `scorer.score` with the meta RM's `k_meta` (capped at k),
    each result carrying the `k_meta` its vote kept; a failure becomes the client's 503 or 500."""

    def call(items: list[Any], k: int, temperature: float, meta: bool) -> list[dict[str, Any]]:
        kept = min(k_meta, k) if meta and k_meta is not None else None
        try:
            results = scorer.score(items, k, temperature, kept, meta)
        except Exception as e:
            # The details (Ray's actor ids, PIDs, addresses, tracebacks) go to the server's log
            # only; the client learns what happened.
            log.exception("scoring failed")
            from spct.cluster import actor_fault

            if actor_fault(e) is not None:
                raise RequestError(503, None, *restart(scorer)) from None
            raise RequestError(500, None, f"scoring failed ({type(e).__name__}); see the server's log") from None
        return [dict(result, k_meta=kept) for result in results]

    return call


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
    openrlhf_group: bool,
    batch_window_ms: float,
    group_window_s: float,
    max_batch_prompts: int,
    max_queue_prompts: int,
    request_timeout_s: float,
) -> FastAPI:
    """The FastAPI app. With a `token`, every endpoint wants `Authorization: Bearer <token>`.
    `openrlhf_group` is /openrlhf's default mode (a request may set `group` in its URL). The
    batching settings are `ServeConfig`'s (docs/serving.md, "Batching")."""
    limits = Limits(max_body_bytes, max_items, max_responses, max_chars_per_text, default_k, max_k, temperature)
    gate = Gate(token, max_body_bytes)
    markers = list(end_markers)
    batcher = Batcher(engine_call(scorer, k_meta), scorer.check, window_s=batch_window_ms / 1000,
                      group_window_s=group_window_s, max_batch_prompts=max_batch_prompts,
                      max_queue_prompts=max_queue_prompts, max_responses=max_responses)
    # The schema pages would answer without the token; the endpoints are documented in docs/.
    app = FastAPI(title="spct reward server", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else exc.headers
        return JSONResponse({"error": exc.message, "field": exc.field}, exc.status, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "field": None}, exc.status_code, exc.headers)

    def checked(jobs: list[ScoreJob], fields: list[str]) -> list[ScoreJob]:
        """Each job's GRM prompt measured (in a worker thread: tokenizing a large body takes a
        while); the first too long for the context is refused, naming its field."""
        for job, field_name in zip(jobs, fields, strict=True):
            reason = scorer.check(job.item)
            if reason is not None:
                raise RequestError(413, field_name, reason)
        return jobs

    async def run(jobs: list[ScoreJob]) -> list[Any]:
        try:
            return await batcher.submit(jobs, request_timeout_s)
        except QueueFull as e:
            raise RequestError(503, None, f"the server is busy: {e}", {"Retry-After": str(e.retry_after)}) from None
        except TimeoutError:
            raise RequestError(504, None, f"not scored within request_timeout_s ({request_timeout_s:g} s)") from None

    def unscorable(result: Any, field_name: str) -> None:
        if isinstance(result, Unscorable):  # a group merged from several requests did not fit
            raise RequestError(413, field_name, f"judged with its group: {result}")

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
            "max_k": limits.max_k,
            "max_responses": limits.max_responses,
            "max_items": limits.max_items,
            "waiting_prompts": batcher.waiting_prompts(),
        }

    @app.post("/score")
    async def score(request: Request) -> dict[str, Any]:
        body = await gate.read_json(request)
        job = parse_score_request(body, "", limits, scorer.has_meta)
        await run_in_threadpool(checked, [job], ["responses"])
        (result,) = await run([job])
        unscorable(result, "responses")
        return score_response(result, job.k, scorer.low, scorer.high)

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
        jobs = [parse_score_request(it, f"items[{i}].", limits, scorer.has_meta) for i, it in enumerate(items)]
        fields = [f"items[{i}].responses" for i in range(len(jobs))]
        await run_in_threadpool(checked, jobs, fields)
        results = await run(jobs)
        for result, field_name in zip(results, fields, strict=True):
            unscorable(result, field_name)
        return {"results": [score_response(r, j.k, scorer.low, scorer.high) for r, j in zip(results, jobs, strict=True)]}

    @app.post("/openrlhf")
    async def openrlhf(request: Request) -> dict[str, Any]:
        body = await gate.read_json(request)
        options = parse_query_options(request, limits, scorer.has_meta, openrlhf_group)
        queries, prompts = openrlhf_lists(body, limits)
        batch = OpenRLHFBatch(queries, prompts, markers, limits, options)
        reasons = await run_in_threadpool(lambda: [scorer.check(job.item) for _, job in batch.jobs])
        jobs = []
        for (i, job), reason in zip(batch.jobs, reasons, strict=True):
            if reason is None:
                jobs.append((i, job))
            else:
                batch.unscore(i, reason)
        results = await run([job for _, job in jobs])
        for (i, _), result in zip(jobs, results, strict=True):
            if isinstance(result, Unscorable):
                batch.unscore(i, f"judged with its group: {result}")
            else:
                batch.reward(i, result, scorer.low, scorer.high)
        for i, reason in batch.unscored.items():
            log.warning("/openrlhf: query %d gets reward 0 unscored: %s", i, reason)
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
