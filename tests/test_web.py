"""The demo page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

A tiny LLaMA2-Accessory-style model (debug BLIP-2 tower + qformer connector) is served on 127.0.0.1;
the browser uploads an image, asks, and must show the same answer the engine gives, streamed through
the page's own API client, without a single request leaving the server. A screenshot lands in
test-artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mmtune.config import Config, ConnectorConfig, ModelConfig, VisionConfig, build
from mmtune.data.processor import Processor
from mmtune.data.records import IMAGE_MARKER, Message
from mmtune.inference.engine import Engine
from mmtune.inference.request import ChatRequest
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vlm import build_model
from mmtune.serving.api import ServerSettings, create_app
from mmtune.serving.server import BackgroundServer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def engine(llama_tokenizer_dir) -> Engine:
    torch.manual_seed(1)
    tokenizer = Tokenizer.from_path(llama_tokenizer_dir)
    cfg = Config(model=ModelConfig(dim=64, n_layers=2, n_heads=4, vocab_size=32000, max_seq_len=192),
                 vision=build(VisionConfig, {"preset": "debug-blip2"}), connector=ConnectorConfig(kind="qformer"))
    model = build_model(cfg, tokenizer.image_token_id)
    return Engine(model, Processor.from_sections(tokenizer, cfg.vision, cfg.connector))


def set_range(page, selector: str, value: float) -> None:
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(value))


def test_upload_ask_and_see_the_streamed_answer(engine, tmp_path):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run `make browser` (apt-get install chromium)")
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (30, 160, 90)).save(image)
    expected = engine.generate(ChatRequest([Message("user", f"{IMAGE_MARKER}What is in the picture?")],
                                           image=image.read_bytes(), max_new_tokens=10, temperature=0.0, top_p=0.75))
    assert expected.token_ids
    with BackgroundServer(create_app(engine, ServerSettings(model_name="tiny-qformer"))) as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 820})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#template option').length > 0")
        assert page.input_value("#template") == "alpaca"
        assert page.locator("#examples img").count() >= 2
        page.set_input_files("#image-file", str(image))
        page.wait_for_selector("#preview:not([hidden])")
        page.fill("#question", "What is in the picture?")
        set_range(page, "#temperature", 0)
        set_range(page, "#max-tokens", 10)
        page.click("#run")
        page.wait_for_selector("#answer[data-done='true']", timeout=60_000)
        assert page.inner_text("#answer") == expected.text
        assert f"{expected.prompt_tokens} prompt tokens" in page.inner_text("#status")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "web-demo.png"
        page.screenshot(path=str(shot), full_page=True)
        assert Image.open(shot).size[0] == 1200

        page.click("#examples img >> nth=0")
        page.wait_for_function("document.getElementById('preview').src.startsWith('data:image/png')")
        page.fill("#question", "")
        page.select_option("#template", "none")
        page.click("#run")
        page.wait_for_selector("#answer[data-done='true']", timeout=60_000)
        browser.close()
    assert requests and all(r.startswith(url) or r.startswith("data:") for r in requests)


def test_a_refused_request_shows_the_error(engine):
    from playwright.sync_api import sync_playwright

    with BackgroundServer(create_app(engine, ServerSettings(api_key="k"))) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#key-field:not([hidden])")
        page.fill("#api-key", "wrong")
        page.fill("#question", "hello")
        page.click("#run")
        page.wait_for_selector("#answer.error")
        assert "API key" in page.inner_text("#answer")
        page.fill("#api-key", "k")
        set_range(page, "#max-tokens", 3)
        page.click("#run")
        page.wait_for_selector("#answer[data-done='true']", timeout=60_000)
        browser.close()

