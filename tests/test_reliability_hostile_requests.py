"""Hostile requests to the API of ``mmtune serve`` (a real tiny engine, uvicorn on 127.0.0.1 only).

Each hostile request gets a 4xx (or 503 when the queue is full) with an error message, and the server
keeps answering ordinary requests. Already proved by tests/test_api.py: malformed JSON and schema
errors, remote image URLs, bad base64, oversized bodies (declared and streamed), a full queue, API keys;
by tests/test_serving_engine.py::test_api_serves_the_real_engine: an image over the pixel limit.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import zipfile

import httpx
import pytest
import torch
from PIL import Image

from mmtune.config import Config, ConnectorConfig, ModelConfig, VisionConfig, build
from mmtune.data.processor import Processor
from mmtune.inference.engine import Engine
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vlm import build_model
from mmtune.serving.api import ServerSettings, create_app
from mmtune.serving.server import BackgroundServer

FLOOD = 24


@pytest.fixture(scope="module")
def engine(llama_tokenizer_dir) -> Engine:
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_path(llama_tokenizer_dir)
    cfg = Config(model=ModelConfig(dim=64, n_layers=1, n_heads=4, vocab_size=32000, max_seq_len=128),
                 vision=build(VisionConfig, {"preset": "debug-clip"}), connector=ConnectorConfig(kind="mlp"))
    model = build_model(cfg, tokenizer.image_token_id)
    return Engine(model, Processor.from_sections(tokenizer, cfg.vision, cfg.connector))


@pytest.fixture(scope="module")
def client(engine):
    settings = ServerSettings(model_name="tiny", max_body_bytes=1 << 20, max_pending=2, default_max_tokens=4)
    with BackgroundServer(create_app(engine, settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def ask(text: str = "Hello?", image: bytes | None = None, **extra) -> dict:
    content: list = [{"type": "text", "text": text}]
    if image is not None:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        content.append({"type": "image_url", "image_url": {"url": url}})
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0, **extra}


def still_serving(client: httpx.Client) -> None:
    answer = client.post("/v1/chat/completions", json=ask())
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["role"] == "assistant"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.txt", "0" * 100_000)
    return buf.getvalue()


@pytest.mark.parametrize("upload", [
    b"just some text, not an image",
    b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    "zip",
    "truncated png",
    b"",
])
def test_non_image_uploads_get_400_naming_the_image(client, upload):
    data = zip_bytes() if upload == "zip" else png()[:60] if upload == "truncated png" else upload
    answer = client.post("/v1/chat/completions", json=ask("What is it?", image=data))
    assert answer.status_code == 400, answer.text
    assert "image" in answer.json()["error"]["message"]
    still_serving(client)


@pytest.mark.parametrize("body,needle", [
    (b"[" * 200_000 + b"]" * 200_000, "JSON"),
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "JSON"),
    (b"[]", "invalid request"),
    (b"null", "invalid request"),
    (json.dumps(ask(max_tokens="lots")).encode(), "max_tokens"),
    (json.dumps(ask(temperature=float("inf"))).replace("Infinity", "1e999").encode(), "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "word " * 20},
                              {"role": "assistant", "content": "ok"}] * 200 + [{"role": "user", "content": "?"}]}
                ).encode(), "prompt takes"),
])
def test_malicious_bodies_get_400_with_a_message(client, body, needle):
    answer = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text[:500]
    assert needle in answer.json()["error"]["message"]
    still_serving(client)


def test_a_flood_of_concurrent_requests_gets_answers_or_503_and_the_queue_drains(client):
    results: list = [None] * FLOOD
    go = threading.Event()

    def one(i: int) -> None:
        go.wait(10)
        try:
            results[i] = client.post("/v1/chat/completions", json=ask(f"request {i}", stream=i % 2 == 1))
        except httpx.HTTPError as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(FLOOD)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(120)
    codes = [getattr(r, "status_code", repr(r)) for r in results]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    for r in results:
        if r.status_code == 503:
            assert "busy" in r.json()["error"]["message"]
    for _ in range(3):  # every queue slot was given back
        still_serving(client)


def test_a_client_vanishing_mid_stream_frees_its_slot(client):
    for _ in range(4):  # more than max_pending: a leaked slot would leave only 503s
        with client.stream("POST", "/v1/chat/completions", json=ask("stream", stream=True, max_tokens=64)) as r:
            assert r.status_code == 200
            next(r.iter_lines())
        deadline = time.monotonic() + 30
        while (answer := client.post("/v1/chat/completions", json=ask())).status_code == 503:
            assert time.monotonic() < deadline, "the abandoned stream never gave its slot back"
            time.sleep(0.05)
        assert answer.status_code == 200
    assert client.get("/health").json() == {"status": "ok"}
