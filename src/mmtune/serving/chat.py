"""The terminal chat behind ``mmtune chat``: multi-turn, ``/image PATH`` attaches an image, ``/reset`` clears.

The loop reads lines through ``read`` and writes through ``write`` (the terminal by default), so tests
drive it with scripted input. Answers stream as they are generated. One image per conversation: a new
``/image`` starts a new conversation about that image.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from mmtune.data.records import IMAGE_MARKER, Message
from mmtune.errors import MMTuneError
from mmtune.inference.request import ChatRequest, Completion

HELP = ("commands: /image PATH (attach an image; starts a new conversation), /reset (forget the "
        "conversation), /help, /quit")


@dataclass
class Conversation:
    """The state of one chat: messages so far, the image and whether it is placed yet."""

    settings: ChatRequest
    messages: list[Message] = field(default_factory=list)
    image: Optional[bytes] = None
    image_placed: bool = False

    def request(self, text: str) -> ChatRequest:
        """The request for a new user message (the image marker goes before the first one after /image)."""
        if self.image is not None and not self.image_placed:
            text = f"{IMAGE_MARKER}\n{text}"
        return replace(self.settings, messages=[*self.messages, Message("user", text)], image=self.image)

    def record(self, request: ChatRequest, completion: Completion) -> None:
        """Keeps the exchange for the next turn."""
        self.messages = [*request.messages, Message("assistant", completion.text)]
        self.image_placed = self.image is not None


def terminal_write(text: str) -> None:
    """Writes ``text`` to stdout at once (answers stream piece by piece)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def chat_loop(generate: Callable[..., Completion], settings: ChatRequest,
              read: Callable[[str], str] = input, write: Callable[[str], None] = terminal_write) -> None:
    """Runs the chat until ``/quit`` or end of input; ``generate(request, on_text)`` answers each turn."""
    conversation = Conversation(settings)
    write(HELP + "\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            return
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            if command == "/quit":
                return
            conversation = _command(command, arg.strip(), conversation, settings, write)
            continue
        request = conversation.request(line)
        write("assistant> ")
        try:
            completion = generate(request, write)
        except MMTuneError as exc:
            write(f"\nerror: {exc}\n")
            continue
        write("\n")
        conversation.record(request, completion)


def _command(command: str, arg: str, conversation: Conversation, settings: ChatRequest,
             write: Callable[[str], None]) -> Conversation:
    if command == "/reset":
        write("(conversation cleared)\n")
        return Conversation(settings)
    if command == "/image":
        path = Path(arg).expanduser()
        if not arg or not path.is_file():
            write(f"error: /image needs the path of a local image file, got {arg!r}\n")
            return conversation
        write(f"(image {path.name} attached; new conversation)\n")
        return Conversation(settings, image=path.read_bytes())
    write(HELP + "\n")
    return conversation
