"""Every template pinned to exact token ids and loss masks with the real LLaMA-style tokenizer.

The expected ids were computed once and checked by decoding them back to text (the ``text`` column);
a change in rendering or tokenisation fails these tests.
"""

from __future__ import annotations

import pytest

from mmtune.data.encode import encode_record
from mmtune.data.records import Message, Record, caption_record, chat_record
from mmtune.data.templates import TEMPLATES, AlpacaTemplate, Segment, get_template, template_names
from mmtune.errors import ConfigError, DataError
from mmtune.models.tokenizer import Tokenizer

IMG = b"image bytes (never decoded here)"
IMAGE_ID = 32000
SYSTEM_LLAVA = [330, 10706, 1444, 264, 13903, 2930, 304, 396, 18278, 10895, 13892, 28723, 415, 13892,
                5212, 10865, 28725, 10537, 28725, 304, 27057, 11194, 298, 272, 2930, 28742, 28713, 4224,
                28723]
ALPACA_HEAD = [1, 20811, 349, 396, 13126, 369, 13966, 264, 3638]


@pytest.fixture(scope="module")
def tok(llama_tokenizer_dir):
    return Tokenizer.from_path(llama_tokenizer_dir)


def _spans(mask: list[bool]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, flag in enumerate(mask + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _check(tok, record, template, ids, spans, text, supervised, **kw):
    kw = {"num_image_tokens": 0, "image_position": "placeholder", **kw}
    sample = encode_record(record, tok, template, max_seq_len=512, **kw)
    got = sample.input_ids.tolist()
    assert tok.decode(got, skip_special_tokens=False) == text
    assert got == ids
    assert _spans(sample.loss_mask.tolist()) == spans
    assert [tok.decode(got[a:b], skip_special_tokens=False) for a, b in spans] == supervised
    return sample


def test_alpaca_without_input(tok):
    record = Record((Message("user", "Give three tips for staying healthy."),
                     Message("assistant", "Eat well, exercise, and sleep.")))
    ids = ALPACA_HEAD + [28723, 12018, 264, 2899, 369, 6582, 1999, 2691, 274, 272, 2159, 28723, 13, 13,
                         27332, 3133, 3112, 28747, 13, 28777, 495, 1712, 10636, 354, 13465, 7783, 28723,
                         13, 13, 27332, 12107, 28747, 28749, 270, 1162, 28725, 9095, 28725, 304, 4289,
                         28723, 2]
    text = ("<s> Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n"
            "### Response:Eat well, exercise, and sleep.</s>")
    _check(tok, record, "alpaca", ids, [(41, 51)], text, ["Eat well, exercise, and sleep.</s>"])


def test_alpaca_with_input(tok):
    record = Record((Message("user", "Translate the sentence to French.", input="I like cheese."),
                     Message("assistant", "J'aime le fromage.")))
    ids = ALPACA_HEAD + [28725, 5881, 1360, 395, 396, 2787, 369, 5312, 3629, 2758, 28723, 12018, 264,
                         2899, 369, 6582, 1999, 2691, 274, 272, 2159, 28723, 13, 13, 27332, 3133, 3112,
                         28747, 13, 3131, 10020, 272, 12271, 298, 4949, 28723, 13, 13, 27332, 11232,
                         28747, 13, 28737, 737, 13628, 28723, 13, 13, 27332, 12107, 28747, 28798, 28742,
                         28708, 545, 462, 477, 465, 28723, 2]
    text = ("<s> Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nTranslate the sentence to French.\n\n### Input:\nI like cheese.\n\n"
            "### Response:J'aime le fromage.</s>")
    _check(tok, record, "alpaca", ids, [(60, 69)], text, ["J'aime le fromage.</s>"])


@pytest.mark.parametrize("with_input", [False, True])
def test_alpaca_matches_llama2_accessory_whole_string_tokenisation(tok, with_input):
    """LLaMA2-Accessory tokenises BOS + prompt + answer + EOS at once and masks len(BOS + prompt)."""
    user = Message("user", "Summarise: the cat sat.", input="The cat sat on the mat." if with_input else "")
    record = Record((user, Message("assistant", "A cat sat on a mat.")))
    sample = encode_record(record, tok, "alpaca", num_image_tokens=0, max_seq_len=512)
    head = AlpacaTemplate.INTRO_INPUT if with_input else AlpacaTemplate.INTRO
    prompt = f"{head}\n\n### Instruction:\n{user.content}\n\n"
    prompt += f"### Input:\n{user.input}\n\n### Response:" if with_input else "### Response:"
    whole = [tok.bos_id] + tok.encode(prompt + "A cat sat on a mat.") + [tok.eos_id]
    n_prompt = 1 + len(tok.encode(prompt))
    assert sample.input_ids.tolist() == whole
    assert sample.loss_mask.tolist() == [False] * n_prompt + [True] * (len(whole) - n_prompt)


def test_alpaca_multi_turn_continues_with_instruction_blocks(tok):
    record = chat_record([("Say a.", "a"), ("Say b.", "b")])
    sample = encode_record(record, tok, "alpaca", num_image_tokens=0, max_seq_len=512)
    ids = sample.input_ids.tolist()
    text = tok.decode(ids, skip_special_tokens=False)
    assert text.endswith("### Response:a</s>\n\n### Instruction:\nSay b.\n\n### Response:b</s>")
    assert [tok.decode(ids[a:b], skip_special_tokens=False) for a, b in _spans(sample.loss_mask.tolist())] \
        == ["a</s>", "b</s>"]


def test_caption_without_prefix_after_bos(tok):
    ids = [1, IMAGE_ID, IMAGE_ID, IMAGE_ID, IMAGE_ID, 330, 3914, 7825, 356, 272, 10305, 28723, 2]
    text = "<s><image><image><image><image> A dog runs on the beach.</s>"
    _check(tok, caption_record("A dog runs on the beach.", IMG), "caption", ids, [(5, 13)], text,
           ["A dog runs on the beach.</s>"], num_image_tokens=4, image_position="after_bos")


def test_caption_with_prefix_conditions_but_is_not_supervised(tok):
    record = caption_record("The author of this painting is Claude Monet.", IMG, prefix="The author")
    ids = [1, IMAGE_ID, IMAGE_ID, IMAGE_ID, IMAGE_ID, 415, 3227, 302, 456, 11514, 349, 26836, 3217, 299,
           28723, 2]
    text = "<s><image><image><image><image> The author of this painting is Claude Monet.</s>"
    _check(tok, record, "caption", ids, [(7, 16)], text, ["of this painting is Claude Monet.</s>"],
           num_image_tokens=4, image_position="after_bos")


def test_caption_prefix_not_in_caption_is_joined_with_a_space(tok):
    ids = [1, 415, 3227, 4677, 456, 7092, 297, 28705, 28740, 28783, 28782, 28740, 28723, 2]
    _check(tok, caption_record("wrote this novel in 1851.", prefix="The author"), "caption", ids,
           [(3, 14)], "<s> The author wrote this novel in 1851.</s>", ["wrote this novel in 1851.</s>"])


def test_plain_is_image_then_caption_and_drops_the_user_turn(tok):
    record = chat_record([("<image>\n", "A cat sleeping on a sofa.")], IMG)
    ids = [1, IMAGE_ID, IMAGE_ID, IMAGE_ID, 330, 5255, 12863, 356, 264, 23117, 28723, 2]
    _check(tok, record, "plain", ids, [(4, 12)], "<s><image><image><image> A cat sleeping on a sofa.</s>",
           ["A cat sleeping on a sofa.</s>"], num_image_tokens=3)


def test_llava_v1_multi_turn_supervises_every_answer_only(tok):
    record = chat_record([("<image>\nWhat color is the car?", "The car is red."),
                          ("Is it parked?", "Yes, on the street.")], IMG)
    ids = [1] + SYSTEM_LLAVA + [2223, 725, 28747, 28705, IMAGE_ID, IMAGE_ID, IMAGE_ID, 28705, 13, 3195,
                                3181, 349, 272, 1253, 28804, 8602, 8048, 12738, 28747, 415, 1253, 349,
                                2760, 28723, 2, 11123, 28747, 1691, 378, 23643, 28804, 8602, 8048, 12738,
                                28747, 5592, 28725, 356, 272, 5948, 28723, 2]
    text = ("<s> A chat between a curious human and an artificial intelligence assistant. The assistant "
            "gives helpful, detailed, and polite answers to the human's questions. USER: "
            "<image><image><image> \nWhat color is the car? ASSISTANT: The car is red.</s>"
            "USER: Is it parked? ASSISTANT: Yes, on the street.</s>")
    _check(tok, record, "llava_v1", ids, [(49, 55), (65, 72)], text,
           ["The car is red.</s>", "Yes, on the street.</s>"], num_image_tokens=3)


def test_llama2_chat_with_system_prompt(tok):
    record = chat_record([("Hi!", "Hello! How can I help?"), ("Name a fruit.", "An apple.")],
                         system="You are a helpful assistant.")
    ids = [1, 733, 16289, 28793, 2087, 18741, 4060, 13, 1976, 460, 264, 10865, 13892, 28723, 13, 28789, 700,
           18741, 4060, 13, 13, 23809, 28808, 733, 28748, 16289, 28793, 22557, 28808, 1602, 541, 315, 1316,
           28804, 28705, 2, 1, 733, 16289, 28793, 6620, 264, 10607, 28723, 733, 28748, 16289, 28793, 1094,
           19767, 28723, 28705, 2]
    text = ("<s> [INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHi! [/INST] Hello! How can I "
            "help? </s><s> [INST] Name a fruit. [/INST] An apple. </s>")
    _check(tok, record, "llama2_chat", ids, [(27, 36), (48, 53)], text,
           ["Hello! How can I help? </s>", "An apple. </s>"])


def test_llama2_chat_matches_meta_per_turn_encoding(tok):
    """Meta encodes each turn as BOS + "[INST] {q} [/INST] {a} " + EOS."""
    record = chat_record([("Hi!", "Hello!"), ("Bye.", "Goodbye!")])
    sample = encode_record(record, tok, "llama2_chat", num_image_tokens=0, max_seq_len=512)
    meta = []
    for q, a in (("Hi!", "Hello!"), ("Bye.", "Goodbye!")):
        meta += [tok.bos_id] + tok.encode(f"[INST] {q} [/INST] {a} ") + [tok.eos_id]
    assert sample.input_ids.tolist() == meta


def test_none_concatenates_raw_text(tok):
    ids = [1, 28705, 28750, 28806, 28750, 28746, 28781, 2, 304, 28705, 28770, 28806, 28770, 28746, 28784, 2]
    _check(tok, chat_record([("2+2=", "4"), (" and 3+3=", "6")]), "none", ids, [(6, 8), (14, 16)],
           "<s> 2+2=4</s> and 3+3=6</s>", ["4</s>", "6</s>"])


def test_system_prompt_override_and_record_system_message(tok):
    tmpl = get_template("llava_v1")
    record = chat_record([("q", "a")])
    assert tmpl.render(record)[1].text.startswith(tmpl.default_system)
    assert tmpl.render(record, system_prompt="Be brief.")[1].text == "Be brief. USER: q ASSISTANT:"
    own = chat_record([("q", "a")], system="Mine.")
    assert tmpl.render(own, system_prompt="Be brief.")[1].text == "Mine. USER: q ASSISTANT:"


def test_generation_prompt_ends_with_the_assistant_header(tok):
    record = Record((Message("user", "What is this?"),))
    segments = get_template("llava_v1").render(record, generation=True)
    assert segments[-1].text.endswith("questions. USER: What is this? ASSISTANT:")
    assert not any(s.supervised for s in segments)
    caption = get_template("caption").render(Record((), image=IMG, prefix="The author"), generation=True)
    assert caption == [Segment("bos"), Segment("image"), Segment("text", "The author")]


def test_registry_and_unknown_name():
    assert template_names() == ["alpaca", "caption", "llama2_chat", "llava_v1", "none", "plain"]
    assert all(TEMPLATES[name].name == name for name in template_names())
    with pytest.raises(ConfigError, match="'vicuna'.*one of alpaca, caption"):
        get_template("vicuna")


@pytest.mark.parametrize("messages, match", [
    ((Message("assistant", "a"),), "assistant message without a user message"),
    ((Message("user", "q"), Message("user", "q2"), Message("assistant", "a")), "two user messages in a row"),
    ((Message("user", "q"),), "ends with a user message"),
])
def test_malformed_conversations_raise_data_error(messages, match):
    with pytest.raises(DataError, match=match):
        get_template("llava_v1").render(Record(messages))


def test_caption_refuses_user_messages_and_needs_one_caption():
    with pytest.raises(DataError, match="not user messages"):
        get_template("caption").render(chat_record([("q", "a")]))
    with pytest.raises(DataError, match="exactly one assistant message"):
        get_template("caption").render(Record((Message("assistant", "a"), Message("assistant", "b"))))
    with pytest.raises(DataError, match="not one of"):
        Message("bot", "hi")
