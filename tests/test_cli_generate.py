"""``mmtune generate``, ``score`` and ``chat`` on a tiny saved model (debug CLIP + mlp, real LLaMA tokenizer)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from mmtune import cli
from mmtune.config import Config, ConnectorConfig, ModelConfig, VisionConfig, build
from mmtune.data.records import Message
from mmtune.inference.engine import Engine
from mmtune.inference.request import ChatRequest
from mmtune.models.io import save_model
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vlm import build_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, llama_tokenizer_dir):
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_path(llama_tokenizer_dir)
    cfg = Config(model=ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000, max_seq_len=256),
                 vision=build(VisionConfig, {"preset": "debug-clip"}), connector=ConnectorConfig(kind="mlp"))
    out = tmp_path_factory.mktemp("tiny-model")
    save_model(build_model(cfg, tokenizer.image_token_id), out, tokenizer)
    return out


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine.from_dir(model_dir)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "blue.png"
    Image.new("RGB", (48, 40), (20, 40, 220)).save(path)
    return path


def run_main(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    return code, capsys.readouterr().out


def test_generate_prints_the_engine_answer(capsys, model_dir, engine, image_path):
    code, out = run_main(capsys, "generate", "--model", str(model_dir), "--image", str(image_path),
                         "--prompt", "What colour is it?", "--max-new-tokens", "10")
    expected = engine.generate(ChatRequest([Message("user", "What colour is it?")], image=image_path.read_bytes(),
                                           max_new_tokens=10))
    assert code == 0 and out == expected.text + "\n" and expected.token_ids


def test_generate_with_prefix_and_empty_prompt_captions(capsys, model_dir, engine, image_path):
    code, out = run_main(capsys, "generate", "--model", str(model_dir), "--image", str(image_path), "--prompt", "",
                         "--template", "caption", "--prefix", "The author", "--max-new-tokens", "6")
    expected = engine.generate(ChatRequest([], image=image_path.read_bytes(), prefix="The author",
                                           template="caption", max_new_tokens=6))
    assert code == 0 and out == "The author" + expected.text + "\n"


def test_generate_batch_writes_answers_in_order_and_reports_bad_lines(capsys, model_dir, engine, image_path, tmp_path):
    lines = [{"id": "a", "prompt": "Describe it.", "image": image_path.name},
             {"id": "b", "prompt": "Say something about cats."},
             {"id": "c", "prompt": "x", "image": "missing.png"},
             {"id": "d", "prompt": "", "image": image_path.name, "prefix": "A"}]
    batch = image_path.parent / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    out_file = tmp_path / "answers.jsonl"
    code, _ = run_main(capsys, "generate", "--model", str(model_dir), "--batch", str(batch), "--out", str(out_file),
                       "--max-new-tokens", "8", "--batch-size", "2")
    results = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert code == 0 and [r["id"] for r in results] == ["a", "b", "c", "d", 5]
    assert "missing.png" in results[2]["error"] and "not valid JSON" in results[4]["error"]
    alone = engine.generate(ChatRequest([Message("user", "Describe it.")], image=image_path.read_bytes(), max_new_tokens=8))
    assert results[0]["answer"] == alone.text
    assert results[0]["completion_tokens"] == len(alone.token_ids)
    assert "answer" in results[3]


def test_score_json_gives_token_ids_and_logprobs(capsys, model_dir, engine, image_path):
    code, out = run_main(capsys, "score", "--model", str(model_dir), "--image", str(image_path), "--prompt", "Colour:",
                         "--answer", "blue sky", "--template", "none", "--json")
    result = json.loads(out)
    tok = engine.tokenizer
    assert code == 0 and tok.decode(result["token_ids"]) == "blue sky"
    assert len(result["logprobs"]) == len(result["token_ids"]) and all(lp < 0 for lp in result["logprobs"])
    assert result["total_logprob"] == pytest.approx(sum(result["logprobs"]))
    assert result["prompt_tokens"] == 1 + engine.model.num_image_tokens + len(tok.encode("Colour:"))


def test_chat_reads_turns_from_stdin(capsys, monkeypatch, model_dir, image_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/image {image_path}\nhello\n/reset\nhi again\n"))
    code, out = run_main(capsys, "chat", "--model", str(model_dir), "--max-new-tokens", "4")
    assert code == 0 and out.count("assistant> ") == 2
    assert "image blue.png attached" in out and "conversation cleared" in out


@pytest.mark.parametrize("args,needle", [
    (["generate", "--image", "/no/such/file.png", "--prompt", "x"], "image file not found"),
    (["generate", "--image", "http://example.com/a.png", "--prompt", "x"], "local file, not a URL"),
    (["generate", "--prompt", "x", "--template", "vicuna"], "'template': got 'vicuna'"),
    (["generate", "--batch", "in.jsonl"], "--batch/--out"),
    (["score", "--prompt", "x", "--answer", "", "--template", "none"], "nothing to score"),
])
def test_user_mistakes_are_one_line_errors_with_code_2(capsys, model_dir, args, needle):
    code = cli.main([args[0], "--model", str(model_dir), *args[1:]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0]


def test_the_process_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmtune", "generate", "--model", str(tmp_path), "--prompt", "x"],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "found an empty directory; accepted:" in lines[0], result.stderr
