"""mmtune's prompt templates (:mod:`mmtune.data.templates`) as Jinja chat templates for exported models.

Message content may be a string (with ``<image>`` markers) or a list of ``{"type": "image"}`` /
``{"type": "text"}`` parts. ``llava_v1`` puts ``<image>\\n`` where the image is (the ``placeholder``
position); ``alpaca`` drops image markers and parts (the ``after_bos`` position: the processor puts the
image right after BOS). transformers renders with ``trim_blocks`` (a newline right after a tag is
dropped), so newlines that follow a tag are written inside ``{{ }}``. Both end a user turn with the
assistant header, as mmtune's generation prompt does.
"""

from __future__ import annotations

from mmtune.errors import CheckpointError

LLAVA_V1 = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }} "
    "{% else %}A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. {% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} ASSISTANT:"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] if m['content'] is string else m['content'][0]['text'] }}"
    "{{ eos_token }}{% endif %}{% endfor %}")

ALPACA = (
    "{{ bos_token }}{% set ns = namespace(first=true) %}"
    "{% if messages[0]['role'] == 'system' %}{% set intro = messages[0]['content'] %}"
    "{% else %}{% set intro = 'Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.' %}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% if m['content'] is string %}{% set text = m['content'] %}"
    "{% else %}{% set text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% endif %}{% if '<image>' in text %}{% set text = text.replace('<image>', '').strip() %}{% endif %}"
    "{% if ns.first %}{{ intro }}{% set ns.first = false %}{% endif %}"
    "{{ '\\n\\n### Instruction:\\n' + text + '\\n\\n### Response:' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] if m['content'] is string else m['content'][0]['text'] }}"
    "{{ eos_token }}{% endif %}{% endfor %}")

CHAT_TEMPLATES = {"llava_v1": LLAVA_V1, "alpaca": ALPACA}


def chat_template(name: str) -> str:
    """The Jinja form of mmtune's template ``name``; CheckpointError for a template without one."""
    if name not in CHAT_TEMPLATES:
        raise CheckpointError(f"template {name!r} has no chat template for an export ({', '.join(CHAT_TEMPLATES)} "
                              "have); choose one with --template")
    return CHAT_TEMPLATES[name]
