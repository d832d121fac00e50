"""The recipe for lmms-eval and VLMEvalKit against ``mmtune serve``: the API driven as their OpenAI
backends drive it (chat.completions, a bearer key, the image as a base64 data-URI part, max_tokens,
temperature 0; lmms-eval sends the text part first and the image as PNG, VLMEvalKit the image first
with ``detail``). With ``--image-first`` every answer equals ``mmtune eval``'s for the same question."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

import bench_factory as bf
from mmtune.cli import main
from mmtune.evaluation.benchmarks.common import BenchFiles
from mmtune.evaluation.tasks import BENCHMARKS
from mmtune.inference.engine import Engine
from mmtune.serving.api import ServerSettings, create_app
from mmtune.serving.schema import parse_request
from mmtune.serving.server import BackgroundServer

KEY = "sk-local"


def _png_data_uri(path: Path) -> str:
    """The image as lmms-eval sends it: decoded, saved again as PNG."""
    out = io.BytesIO()
    Image.open(path).convert("RGB").save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def lmms_eval_body(text: str, image: Path, max_tokens: int) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": _png_data_uri(image)}}]}],
        "max_tokens": max_tokens, "temperature": 0}


def vlmevalkit_body(text: str, image: Path, max_tokens: int) -> dict:
    uri = "data:image/jpeg;base64," + base64.b64encode(image.read_bytes()).decode()
    return {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri, "detail": "low"}}, {"type": "text", "text": text}]}],
        "max_tokens": max_tokens, "n": 1, "temperature": 0}


@pytest.mark.parametrize("client_body", [lmms_eval_body, vlmevalkit_body])
def test_tools_openai_backends_get_mmtune_evals_answers(tmp_path, client_body):
    model = bf.tiny_model(tmp_path / "model")
    made = bf.pope(tmp_path / "pope")
    data = [str(p) for p in made["data"]]
    assert main(["eval", "--model", str(model), "--task", "pope", "--data", *data, "--image-root",
                 str(made["images"]), "--template", "llava_v1", "--device", "cpu", "--max-new-tokens", "4",
                 "--predictions", str(tmp_path / "p.jsonl")]) == 0
    expected = [json.loads(line)["answer"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    items = BENCHMARKS["pope"].read(BenchFiles(data, image_root=str(made["images"])), BENCHMARKS["pope"].prompt)

    engine = Engine.from_dir(model, template="llava_v1")
    settings = ServerSettings(model_name="tiny", api_key=KEY, image_first=True)
    answers = []
    with BackgroundServer(create_app(engine, settings)) as url, \
            httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as client:
        for item in items:
            text = item.record.messages[-1].content.removeprefix("<image>\n")
            reply = client.post("/v1/chat/completions", json=client_body(text, Path(item.record.image), 4))
            assert reply.status_code == 200, reply.text
            answers.append(reply.json()["choices"][0]["message"]["content"])
        # VLMEvalKit's default max_tokens (2048) is beyond this model's context: the answer stops where it fills
        long = client.post("/v1/chat/completions", json=client_body(text, Path(item.record.image), 2048))
        assert long.status_code == 200 and long.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert answers == expected


def test_image_placement_with_and_without_image_first(tmp_path):
    (tmp_path / "a.jpg").write_bytes(bf.image_bytes(1))
    body = lmms_eval_body("Is there a dog?", tmp_path / "a.jpg", 4)
    _, as_sent = parse_request(body, 16)
    _, llava = parse_request(body, 16, image_first=True)
    assert as_sent.messages[0].content == "Is there a dog?<image>"
    assert llava.messages[0].content == "<image>\nIs there a dog?"


def test_serve_image_first_option_reaches_the_settings():
    from mmtune.cli import build_parser
    from mmtune.commands.serve import settings_from_args

    args = build_parser().parse_args(["serve", "--model", "runs/x", "--image-first"])
    assert settings_from_args(args).image_first
    assert not settings_from_args(build_parser().parse_args(["serve", "--model", "runs/x"])).image_first
