"""The inference engine on a tiny random LLaVA-style model (debug CLIP tower + mlp connector).

Greedy answers equal :func:`mmtune.models.generate.generate` on the data layer's prompt ids; seeded
sampling repeats; streamed pieces add up to the answer; prefixes, scoring, batching, the terminal chat
and user mistakes behave as documented; and the API serves the real engine over HTTP.
"""

from __future__ import annotations

import base64
import io
from dataclasses import replace

import httpx
import pytest
import torch
from PIL import Image

from mmtune.config import Config, ConnectorConfig, ModelConfig, VisionConfig, build
from mmtune.data.encode import encode_prompt, encode_record
from mmtune.data.images import ImageTransform
from mmtune.data.processor import Processor
from mmtune.data.records import IMAGE_MARKER, Message, Record
from mmtune.errors import ConfigError, DataError
from mmtune.inference.engine import Engine
from mmtune.inference.request import ChatRequest, Completion
from mmtune.models.generate import SamplingParams, generate
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vlm import build_model
from mmtune.serving.api import ServerSettings, create_app
from mmtune.serving.chat import chat_loop
from mmtune.serving.server import BackgroundServer


def png_bytes(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def engine(llama_tokenizer_dir) -> Engine:
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_path(llama_tokenizer_dir)
    cfg = Config(model=ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000, max_seq_len=256),
                 vision=build(VisionConfig, {"preset": "debug-clip"}), connector=ConnectorConfig(kind="mlp"))
    model = build_model(cfg, tokenizer.image_token_id)
    return Engine(model, Processor.from_sections(tokenizer, cfg.vision, cfg.connector), default_template="alpaca")


def ask(text: str = "What is this?", **kw) -> ChatRequest:
    kw.setdefault("max_new_tokens", 12)
    return ChatRequest(messages=[Message("user", text)], **kw)


def test_greedy_answer_equals_generate_on_the_data_layer_prompt(engine):
    image = png_bytes()
    completion = engine.generate(ask(image=image))
    record = Record(messages=(Message("user", "What is this?"),), image=image)
    prompt = encode_prompt(record, engine.tokenizer, "alpaca", num_image_tokens=engine.model.num_image_tokens,
                           image_position="placeholder").input_ids.tolist()
    pixels = engine.processor.image_transform(image)[None]
    expected = generate(engine.model, [prompt], pixels, SamplingParams(max_new_tokens=12, stop_ids=(engine.tokenizer.eos_id,)))[0]
    assert completion.token_ids == expected and len(expected) > 0
    assert completion.prompt_tokens == len(prompt)
    assert prompt.count(engine.tokenizer.image_token_id) == engine.model.num_image_tokens
    assert completion.text == engine.tokenizer.decode(expected).strip()
    assert completion.finish_reason == ("length" if len(expected) == 12 else "stop")


def test_seeded_sampling_repeats_and_seeds_differ(engine):
    runs = [engine.generate(ask(temperature=1.0, top_p=0.95, seed=seed, max_new_tokens=16)).token_ids
            for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_streamed_pieces_add_up_to_the_answer(engine):
    pieces: list[str] = []
    completion = engine.generate(ask(temperature=1.0, seed=3, max_new_tokens=20), on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == completion.text


def test_prefix_is_rendered_as_the_start_of_the_answer(engine):
    request = ask("Describe the image.", prefix="The author", image=png_bytes())
    prepared = engine.prepare(request)
    record = Record(messages=(Message("user", "Describe the image."), Message("assistant", "The author")),
                    image=request.image)
    trained = encode_record(record, engine.tokenizer, "alpaca", num_image_tokens=engine.model.num_image_tokens,
                            image_position="placeholder", max_seq_len=1024).input_ids.tolist()
    assert prepared.prompt_ids == trained[:-1]  # the training rendering without the answer's EOS
    assert engine.tokenizer.decode(prepared.prompt_ids).endswith("### Response:The author")
    assert prepared.keep_leading_space
    caption = engine.prepare(ChatRequest(messages=[], prefix="The author", template="caption", image=png_bytes()))
    assert engine.tokenizer.decode(caption.prompt_ids).strip() == "The author"


def test_score_matches_a_full_forward_and_template_none_is_raw(engine):
    image = png_bytes((10, 200, 10))
    request = ask("Color?", image=image, template="none")
    score = engine.score(request, "green and round")
    tok = engine.tokenizer
    n = engine.model.num_image_tokens
    assert score.prompt_ids == [tok.bos_id] + [tok.image_token_id] * n + tok.encode("Color?")
    assert tok.decode(score.token_ids) == "green and round"
    with torch.no_grad():
        ids = torch.tensor([score.prompt_ids + score.token_ids])
        logits = engine.model(ids, engine.processor.image_transform(image)[None]).float()
    logp = torch.log_softmax(logits[0], -1)
    start = len(score.prompt_ids)
    expected = [float(logp[start - 1 + i, t]) for i, t in enumerate(score.token_ids)]
    assert score.logprobs == pytest.approx(expected, abs=1e-5)
    with_eos = engine.score(request, "green and round", with_eos=True)
    assert with_eos.token_ids == score.token_ids + [tok.eos_id]
    assert with_eos.logprobs[:-1] == pytest.approx(score.logprobs, abs=1e-5)
    rendered = engine.score(ask("Color?", image=image), "green and round")
    assert tok.decode(rendered.prompt_ids).endswith("### Response:")
    assert rendered.token_ids == score.token_ids[:len(rendered.token_ids)]


@pytest.mark.parametrize("system", ["", "Answer in one word."])
def test_a_system_prompt_renders_as_training_renders_data_system_prompt(engine, system):
    """An empty system prompt means no system sentence (``data.system_prompt: ""``), not the default."""
    record = Record(messages=(Message("user", "Hi"),))
    trained = encode_prompt(record, engine.tokenizer, "llava_v1", num_image_tokens=engine.model.num_image_tokens,
                            system_prompt=system).input_ids.tolist()
    assert engine.prepare(ask("Hi", template="llava_v1", system_prompt=system)).prompt_ids == trained
    default = engine.prepare(ask("Hi", template="llava_v1")).prompt_ids
    assert default != trained and len(default) > len(trained)


def test_a_left_padded_batch_equals_one_by_one(engine):
    requests = [ask("Hi", image=png_bytes()), ask("A much longer question about the picture, please?"),
                ask("Count the shapes.", image=png_bytes((0, 0, 255)))]
    prepared = [engine.prepare(r) for r in requests]
    batch = engine.run_batch(prepared)
    alone = [engine.run(p) for p in prepared]
    assert [c.token_ids for c in batch] == [c.token_ids for c in alone]


def test_a_batch_stops_where_its_longest_prompt_fills_the_context(engine):
    """``prepare`` lowers max_new_tokens for a long prompt; such a request still batches with short ones,
    and the batch generates until the longest prompt fills the context."""
    long_prompt = ask("word " * 200, max_new_tokens=100)
    prepared = [engine.prepare(ask("Hi", max_new_tokens=100)), engine.prepare(long_prompt)]
    room = engine.max_seq_len - len(prepared[1].prompt_ids)
    assert prepared[1].params.max_new_tokens == room < prepared[0].params.max_new_tokens
    batch = engine.run_batch(prepared)
    assert all(len(c.token_ids) <= room for c in batch)
    assert [c.finish_reason for c in batch] == ["length" if len(c.token_ids) == room else "stop" for c in batch]
    assert batch[1].token_ids == engine.run(prepared[1]).token_ids


def test_user_mistakes_raise_mmtune_errors(engine, tmp_path):
    with pytest.raises(ConfigError, match="data.template"):
        engine.prepare(ask(template="vicuna"))
    with pytest.raises(DataError):
        engine.prepare(ask(image=b"GIF89a not really an image"))
    with pytest.raises(DataError, match="prompt takes"):
        engine.prepare(ask("word " * 400))
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")
    small = Engine(engine.model, replace(engine.processor, image_transform=ImageTransform(32, (0.5,) * 3, (0.5,) * 3,
                                                                                          "pad", 1_000_000)))
    with pytest.raises(DataError):
        small.prepare(ask(image=bomb.getvalue()))


def test_terminal_chat_keeps_turns_places_the_image_once_and_resets(engine, tmp_path):
    image_path = tmp_path / "red.png"
    image_path.write_bytes(png_bytes())
    script = iter([f"/image {image_path}", "what is it?", "and the colour?", "/image /no/such.png", "/reset",
                   "hello", "/quit"])
    seen: list[ChatRequest] = []
    out: list[str] = []

    def fake_generate(request: ChatRequest, on_text) -> Completion:
        seen.append(request)
        on_text(f"answer{len(seen)}")
        return Completion(text=f"answer{len(seen)}")

    chat_loop(fake_generate, ChatRequest(messages=[]), read=lambda _: next(script), write=out.append)
    first, second, third = seen
    assert first.image == image_path.read_bytes() and first.messages == [Message("user", f"{IMAGE_MARKER}\nwhat is it?")]
    assert second.messages == [first.messages[0], Message("assistant", "answer1"), Message("user", "and the colour?")]
    assert second.image == first.image
    assert third.image is None and third.messages == [Message("user", "hello")]
    text = "".join(out)
    assert "answer2" in text and "error: /image needs the path" in text and "conversation cleared" in text
    engine.prepare(second)  # the real engine accepts what the chat builds


def test_api_serves_the_real_engine(engine):
    url_image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")
    small = Engine(engine.model, replace(engine.processor, image_transform=ImageTransform(32, (0.5,) * 3, (0.5,) * 3,
                                                                                          "pad", 1_000_000)))
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url_image}},
                                                      {"type": "text", "text": "What is this?"}]}],
            "temperature": 0, "max_tokens": 12}
    with BackgroundServer(create_app(small, ServerSettings(model_name="tiny"))) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        answer = client.post("/v1/chat/completions", json=body).json()
        expected = small.generate(ask(f"{IMAGE_MARKER}What is this?", image=png_bytes()))
        assert answer["choices"][0]["message"]["content"] == expected.text
        assert answer["usage"]["prompt_tokens"] == expected.prompt_tokens
        assert answer["usage"]["completion_tokens"] == len(expected.token_ids)
        body["messages"][0]["content"][0]["image_url"]["url"] = \
            "data:image/png;base64," + base64.b64encode(bomb.getvalue()).decode()
        refused = client.post("/v1/chat/completions", json=body)
        assert refused.status_code == 400 and "pixels" in refused.json()["error"]["message"]
        assert client.get("/health").json() == {"status": "ok"}
