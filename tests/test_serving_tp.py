"""``torchrun --nproc-per-node 2 -m mmtune serve``: the model split over two CPU ranks (gloo) answers
exactly as one process does, streaming works, and Ctrl-C on rank 0 shuts every rank down cleanly."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from mmtune.config import Config, ConnectorConfig, ModelConfig, VisionConfig, build
from mmtune.data.records import IMAGE_MARKER, Message
from mmtune.inference.engine import Engine
from mmtune.inference.request import ChatRequest
from mmtune.models.io import save_model
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vlm import build_model
from mmtune.serving.server import free_port


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _rank_zero(torchrun_pid: int) -> int:
    for child in _children(torchrun_pid):
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if b"RANK=0" in env:
            return child
    raise AssertionError("no rank-0 worker found under torchrun")


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise AssertionError("the 2-rank server did not come up")


@pytest.mark.slow
def test_two_rank_tensor_parallel_server_answers_like_one_rank(tmp_path, llama_tokenizer_dir):
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_path(llama_tokenizer_dir)
    cfg = Config(model=ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000, max_seq_len=128),
                 vision=build(VisionConfig, {"preset": "debug-clip"}), connector=ConnectorConfig(kind="mlp"))
    save_model(build_model(cfg, tokenizer.image_token_id), tmp_path / "model", tokenizer)
    image = io.BytesIO()
    Image.new("RGB", (40, 40), (250, 200, 10)).save(image, format="PNG")
    question = "Which colour?"
    one = Engine.from_dir(tmp_path / "model").generate(ChatRequest(
        [Message("user", f"{IMAGE_MARKER}{question}")], image=image.getvalue(), max_new_tokens=12))
    assert len(one.token_ids) > 2

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mmtune",
         "serve", "--model", str(tmp_path / "model"), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        body = {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(image.getvalue()).decode()}},
            {"type": "text", "text": question}]}], "temperature": 0, "max_tokens": 12}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
        assert answer["choices"][0]["message"]["content"] == one.text
        assert answer["usage"]["completion_tokens"] == len(one.token_ids)
        streamed = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": True, "temperature": 0.8},
                              timeout=120)
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        os.kill(_rank_zero(process.pid), signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "followed 2 requests" in output
