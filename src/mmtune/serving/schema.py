"""The OpenAI chat-completions wire format: request validation and response bodies.

Accepted: ``messages`` with string content or a list of ``text`` and ``image_url`` parts (the image as a
base64 ``data:`` URI; remote URLs are refused, the server fetches nothing), ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, ``stream`` and
``stream_options.include_usage``. mmtune extensions: ``template``, ``prefix`` and ``input`` (the
optional Alpaca "### Input:" text). Unknown OpenAI fields are ignored, as most servers do. The image
goes where its part is among the text parts, or, for a server started with ``--image-first``, at the
start of its message followed by a newline (LLaVA-1.5's ``<image>\n{question}``).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmtune.data.records import IMAGE_MARKER, Message
from mmtune.errors import MMTuneError
from mmtune.inference.request import ChatRequest, Completion

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)


class RequestError(MMTuneError):
    """A request the API refuses with 400 and this message."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Model):
    url: str
    detail: Optional[str] = None


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageURL


class ChatMessage(_Model):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[Union[TextPart, ImagePart]], None] = None


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    """The body of ``POST /v1/chat/completions``."""

    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: Optional[int] = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    template: Optional[str] = None
    prefix: Optional[str] = None
    input: Optional[str] = None


def parse_request(data: Any, default_max_tokens: int,
                  image_first: bool = False) -> tuple[ChatCompletionRequest, ChatRequest]:
    """Validates a decoded JSON body; raises :class:`RequestError` with a readable message. With
    ``image_first`` the image opens its message (``<image>`` and a newline, then the message's text),
    wherever the client put its part."""
    try:
        body = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise RequestError(f"invalid request: {where}: {first['msg']}") from None
    messages, image = _messages(body.messages)
    if image_first:
        messages = [_image_first(m) for m in messages]
    if body.input:
        if not messages or messages[-1].role != "user":
            raise RequestError("'input' needs a last message from the user")
        messages[-1] = Message("user", messages[-1].content, input=body.input.replace(IMAGE_MARKER, ""))
    request = ChatRequest(
        messages=messages, image=image, prefix=body.prefix or None, template=body.template,
        max_new_tokens=body.max_completion_tokens or body.max_tokens or default_max_tokens,
        temperature=body.temperature, top_p=body.top_p, seed=body.seed)
    return body, request


def _image_first(message: Message) -> Message:
    if IMAGE_MARKER not in message.content:
        return message
    return Message(message.role, f"{IMAGE_MARKER}\n{message.content.replace(IMAGE_MARKER, '').strip()}")


def _messages(messages: list[ChatMessage]) -> tuple[list[Message], Optional[bytes]]:
    out: list[Message] = []
    image: Optional[bytes] = None
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        parts = [TextPart(type="text", text=message.content)] if isinstance(message.content, str) \
            else (message.content or [])
        texts = []
        for part in parts:
            if isinstance(part, TextPart):
                texts.append(part.text.replace(IMAGE_MARKER, ""))
                continue
            if role != "user":
                raise RequestError(f"images are only accepted in user messages, not in a {role} message")
            if image is not None:
                raise RequestError("at most one image per request is supported")
            image = decode_data_uri(part.image_url.url)
            texts.append(IMAGE_MARKER)
        out.append(Message(role, "".join(texts)))
    if any(m.role == "system" for m in out[1:]):
        raise RequestError("a system message may only come first")
    return out, image


def decode_data_uri(url: str) -> bytes:
    """The bytes of a base64 ``data:`` URI; anything else is a :class:`RequestError`."""
    match = _DATA_URI.match(url.strip())
    if not match:
        raise RequestError("image_url must be a base64 data URI (data:image/png;base64,...); "
                           "this server fetches no remote URLs")
    mime = match.group("mime") or ""
    if mime and not mime.startswith("image/"):
        raise RequestError(f"image_url has media type {mime!r}; expected an image")
    try:
        return base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("image_url holds invalid base64 data") from None


def error_body(message: str, kind: str = "invalid_request_error", code: Optional[str] = None) -> dict:
    """An OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def new_id() -> str:
    """A fresh completion id."""
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage(completion: Completion) -> dict:
    """The ``usage`` object of a finished completion."""
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


def completion_body(completion: Completion, model: str, cid: str) -> dict:
    """The non-streaming response."""
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                     "logprobs": None, "finish_reason": completion.finish_reason}],
        "usage": usage(completion),
    }


def chunk_body(cid: str, model: str, delta: dict, finish_reason: Optional[str] = None,
               usage_obj: Optional[dict] = None) -> dict:
    """One server-sent ``chat.completion.chunk``; an empty choices list when it only carries usage."""
    choices = [] if usage_obj is not None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": choices}
    if usage_obj is not None:
        body["usage"] = usage_obj
    return body
