"""The HTTP server: the OpenAI-compatible API and the web page, in one FastAPI app.

Routes: ``GET /`` (the demo page, a client of the API below), ``GET /api/config`` (what the page
needs: templates, defaults, example images, whether a key is required), ``GET /v1/models``,
``POST /v1/chat/completions`` (plain JSON or server-sent events with ``stream: true``) and
``GET /health``. Requests beyond ``max_body_bytes`` get 413, malformed ones 400 with a message, a full
queue 503; a bad request never takes the server down. With ``api_key`` set, ``/v1/*`` needs
``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from mmtune.errors import MMTuneError
from mmtune.inference.request import ChatRequest, Completion
from mmtune.serving.schema import chunk_body, completion_body, error_body, new_id, parse_request, usage
from mmtune.serving.worker import Overloaded, Worker

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


class ServingEngine(Protocol):
    """What the server needs from an engine (:class:`mmtune.inference.engine.Engine` is one)."""

    def prepare(self, request: ChatRequest) -> Any: ...

    def run(self, prepared: Any, on_text: Optional[Callable[[str], None]] = None) -> Completion: ...

    def describe(self) -> dict: ...


@dataclass
class ServerSettings:
    """Limits and identity of one server."""

    model_name: str = "mmtune"
    api_key: Optional[str] = None
    max_body_bytes: int = 20 * 1024 * 1024
    max_pending: int = 8
    default_max_tokens: int = 256
    image_first: bool = False


class Cancelled(Exception):
    """Raised inside generation when the streaming client went away."""


class BodyLimit:
    """ASGI middleware answering 413 to bodies larger than ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _send_json(send, 413, error_body(f"request body over the limit of {self.limit} bytes"))
            return
        chunks, seen, more = [], 0, True
        while more:  # read the whole (bounded) body first, so nothing runs on a truncated one
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            more = message.get("more_body", False)
            if seen > self.limit:
                await _send_json(send, 413, error_body(f"request body over the limit of {self.limit} bytes"))
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


async def _send_json(send: Callable, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def create_app(engine: ServingEngine, settings: ServerSettings, worker: Optional[Worker] = None) -> Any:
    """The ASGI app serving ``engine``; the worker (one is made when None) is closed at shutdown."""
    worker = worker or Worker(settings.max_pending)
    app = FastAPI(title="mmtune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    app.router.add_event_handler("shutdown", worker.close)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def authorised(request: Request) -> bool:
        if not settings.api_key:
            return True
        given = request.headers.get("authorization", "")
        return secrets.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode())

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/config")
    async def config() -> dict:
        examples = [f"/static/{p.name}" for p in sorted(STATIC_DIR.glob("example-*.png"))]
        return {**engine.describe(), "model": settings.model_name, "auth": bool(settings.api_key),
                "max_tokens": settings.default_max_tokens, "examples": examples}

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        if not authorised(request):
            return _error(401, "missing or wrong API key", "authentication_error")
        card = {"id": settings.model_name, "object": "model", "created": int(time.time()), "owned_by": "mmtune"}
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        if not authorised(request):
            return _error(401, "missing or wrong API key", "authentication_error")
        return await _complete(await request.body(), engine, worker, settings)

    return BodyLimit(app, settings.max_body_bytes)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(error_body(message, kind), status_code=status)


async def _complete(raw: bytes, engine: ServingEngine, worker: Worker, settings: ServerSettings) -> Any:
    """Validates, prepares and runs one chat completion (plain JSON or a stream)."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"the body is not valid JSON: {exc}")
    except RecursionError:  # e.g. 100k nested arrays: within the body limit, beyond the parser's stack
        return _error(400, "the body is not valid JSON: nested too deeply")
    try:
        body, chat = parse_request(data, settings.default_max_tokens, settings.image_first)
        prepared = await run_in_threadpool(engine.prepare, chat)
    except MMTuneError as exc:
        return _error(400, str(exc))
    cid = new_id()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    try:
        if body.stream:
            return _stream(engine, worker, prepared, settings.model_name, cid, include_usage)
        completion = await asyncio.wrap_future(worker.submit(lambda: engine.run(prepared)))
    except Overloaded as exc:
        return _error(503, str(exc), "server_overloaded")
    except MMTuneError as exc:
        return _error(400, str(exc))
    except Exception:
        logger.exception("generation failed")
        return _error(500, "generation failed; see the server log", "server_error")
    return JSONResponse(completion_body(completion, settings.model_name, cid))


def _stream(engine: ServingEngine, worker: Worker, prepared: Any, model: str, cid: str,
            include_usage: bool) -> StreamingResponse:
    """Queues the job now (so overload is a 503, not a broken stream) and streams its text as SSE."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()

    def on_text(delta: str) -> None:
        if gone.is_set():
            raise Cancelled()
        loop.call_soon_threadsafe(events.put_nowait, delta)

    future = worker.submit(lambda: engine.run(prepared, on_text))
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(events.put_nowait, None))

    async def sse() -> AsyncIterator[str]:
        try:
            yield _event(chunk_body(cid, model, {"role": "assistant", "content": ""}))
            while (delta := await events.get()) is not None:
                yield _event(chunk_body(cid, model, {"content": delta}))
            if future.exception() is not None:
                logger.error("generation failed", exc_info=future.exception())
                yield _event(error_body("generation failed; see the server log", "server_error"))
            else:
                completion = future.result()
                yield _event(chunk_body(cid, model, {}, completion.finish_reason))
                if include_usage:
                    yield _event(chunk_body(cid, model, {}, usage_obj=usage(completion)))
            yield "data: [DONE]\n\n"
        finally:
            gone.set()

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _event(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"
