"""The OpenAI-compatible API over real HTTP (uvicorn on 127.0.0.1): formats, streaming, limits, errors.

The protocol tests use a scripted engine (deterministic, and able to hold a request to fill the
queue); tests/test_serving_engine.py drives the same server with a real tiny model.
"""

from __future__ import annotations

import base64
import json
import threading

import httpx
import pytest

from mmtune.errors import DataError
from mmtune.inference.request import ChatRequest, Completion
from mmtune.serving.api import ServerSettings, create_app
from mmtune.serving.server import BackgroundServer


class ScriptedEngine:
    """Answers "you said: <last user text>" word by word; ``hold`` keeps a request running."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.running = threading.Event()
        self.seen: list[ChatRequest] = []

    def describe(self) -> dict:
        return {"templates": ["alpaca", "none"], "default_template": "alpaca"}

    def prepare(self, request: ChatRequest) -> ChatRequest:
        if request.image is not None and not request.image.startswith(b"\x89PNG"):
            raise DataError("cannot decode the image")
        return request

    def run(self, request: ChatRequest, on_text=None) -> Completion:
        self.seen.append(request)
        self.running.set()
        if not self.hold.wait(20):
            raise TimeoutError("held too long")
        words = ["you", " said:"] + [" " + w for w in request.messages[-1].content.split()]
        words = words[:request.max_new_tokens]
        for word in words:
            if on_text:
                on_text(word)
        return Completion(text="".join(words), token_ids=list(range(len(words))), prompt_tokens=7,
                          finish_reason="length" if len(words) == request.max_new_tokens else "stop")


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 32).decode()


@pytest.fixture()
def served():
    engine = ScriptedEngine()
    engine.hold.set()
    settings = ServerSettings(model_name="tiny", max_body_bytes=4096, max_pending=1)
    with BackgroundServer(create_app(engine, settings)) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield engine, client


def chat(text: str, **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}


def sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_models_lists_the_served_model(served):
    _, client = served
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny"]


def test_completion_body_and_usage(served):
    engine, client = served
    response = client.post("/v1/chat/completions", json=chat("hello there", max_tokens=50))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "you said: hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert engine.seen[-1].max_new_tokens == 50 and engine.seen[-1].temperature == 1.0


def test_streaming_sends_role_deltas_finish_usage_and_done(served):
    _, client = served
    request = chat("a b", stream=True, max_tokens=3, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert deltas == ["you", " said:", " a"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_image_parts_and_extensions_reach_the_engine(served):
    engine, client = served
    content = [{"type": "text", "text": "what <image> is"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
               {"type": "text", "text": " this?"}]
    request = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
               "prefix": "It is", "template": "none", "input": "extra", "seed": 3, "temperature": 0}
    assert client.post("/v1/chat/completions", json=request).status_code == 200
    seen = engine.seen[-1]
    assert seen.image.startswith(b"\x89PNG")
    assert [(m.role, m.content, m.input) for m in seen.messages] == [
        ("system", "Be brief.", ""), ("user", "what  is<image> this?", "extra")]
    assert (seen.prefix, seen.template, seen.seed, seen.temperature) == ("It is", "none", 3, 0.0)


@pytest.mark.parametrize("payload,needle", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"messages": []}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), "role"),
    (json.dumps(chat("x", temperature=-1)).encode(), "temperature"),
    (json.dumps(chat("x", top_p=0)).encode(), "top_p"),
    (json.dumps(chat("x", n=2)).encode(), "n"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}).encode(),
     "system message"),
    (json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}).encode(), "data URI"),
    (json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGVsbG8="}}]}]}).encode(), "image"),
    (json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}).encode(), "base64"),
    (json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}).encode(), "decode"),
])
def test_bad_requests_get_400_with_a_message_and_the_server_stays_up(served, payload, needle):
    _, client = served
    response = client.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert needle in response.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json=chat("still up")).status_code == 200


def test_oversized_bodies_get_413_declared_or_streamed(served):
    _, client = served
    big = json.dumps(chat("x" * 10_000)).encode()
    response = client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]

    def chunks():
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    response = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert client.post("/v1/chat/completions", json=chat("still up")).status_code == 200


def test_overload_gets_503_and_the_queue_recovers(served):
    engine, client = served
    engine.hold.clear()
    engine.running.clear()
    result: dict = {}
    first = threading.Thread(target=lambda: result.update(
        r=client.post("/v1/chat/completions", json=chat("first"))))
    first.start()
    assert engine.running.wait(20)
    busy = client.post("/v1/chat/completions", json=chat("second"))
    assert busy.status_code == 503 and "busy" in busy.json()["error"]["message"]
    busy_stream = client.post("/v1/chat/completions", json=chat("third", stream=True))
    assert busy_stream.status_code == 503
    engine.hold.set()
    first.join(20)
    assert result["r"].status_code == 200
    assert client.post("/v1/chat/completions", json=chat("after")).status_code == 200


def test_api_key_is_required_when_set():
    engine = ScriptedEngine()
    engine.hold.set()
    app = create_app(engine, ServerSettings(api_key="s3cret"))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/v1/models").status_code == 401
        denied = client.post("/v1/chat/completions", json=chat("x"), headers={"Authorization": "Bearer nope"})
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
        ok = client.post("/v1/chat/completions", json=chat("x"), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/api/config").json()["auth"] is True


def test_page_and_static_files_are_served(served):
    _, client = served
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    config = client.get("/api/config").json()
    assert config["templates"] == ["alpaca", "none"] and config["examples"]
    assert client.get(config["examples"][0]).headers["content-type"] == "image/png"
