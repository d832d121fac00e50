"""Small benchmark files in the official release layouts (a few items each, non-square images made
here), and a tiny saved model with the real LLaMA tokenizer, for the evaluation tests."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

from PIL import Image

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOKENIZER = Path(__file__).parent / "assets" / "llama-tokenizer"


def image_bytes(seed: int, size: tuple[int, int] = (48, 30)) -> bytes:
    """A small non-square JPEG whose colour depends on ``seed``."""
    out = io.BytesIO()
    Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)).save(out, "JPEG")
    return out.getvalue()


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(seed, (40 + 8 * (seed % 3), 24 + 4 * (seed % 2))))


def tiny_model(out: Path) -> Path:
    """A 1-layer LLaVA-layout model (16 image tokens) over the 32000-word LLaMA tokenizer, saved."""
    from mmtune.config import load_config
    from mmtune.models.io import save_model
    from mmtune.models.tokenizer import Tokenizer
    from mmtune.models.vlm import build_model

    tokenizer = Tokenizer.from_path(TOKENIZER)
    cfg = load_config(CONFIGS / "quickstart-stage1.yaml",
                      ["--model.dim", "32", "--model.n_layers", "1", "--model.vocab_size", "32000",
                       "--model.max_seq_len", "512"])
    return save_model(build_model(cfg, tokenizer.image_token_id), out, tokenizer=tokenizer)


HUMANS = [["2", "two", "2", "2", "3", "2", "2", "two", "2", "2"],
          ["yes", "yes", "yes", "yes", "yes", "yes", "yes", "yes", "yes", "no"],
          ["red", "red", "dark red", "red", "red", "maroon", "red", "red", "red", "red"]]


def vqav2(root: Path) -> dict[str, Path]:
    """val2014 questions + annotations (three questions on two images) and the COCO image folder."""
    root.mkdir(parents=True, exist_ok=True)
    questions = [{"image_id": 42, "question": "How many dogs are there?", "question_id": 420},
                 {"image_id": 42, "question": "Is it sunny?", "question_id": 421},
                 {"image_id": 7, "question": "What color is the car?", "question_id": 70}]
    types = ["number", "yes/no", "other"]
    anns = [{"question_id": q["question_id"], "image_id": q["image_id"], "answer_type": t,
             "multiple_choice_answer": h[0], "question_type": "what",
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(h)]}
            for q, t, h in zip(questions, types, HUMANS)]
    for image_id in (42, 7):
        write_image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", image_id)
    (root / "q.json").write_text(json.dumps({"data_subtype": "val2014", "task_type": "Open-Ended",
                                             "questions": questions}))
    (root / "a.json").write_text(json.dumps({"data_subtype": "val2014", "annotations": anns}))
    return {"data": root / "q.json", "annotations": root / "a.json", "images": root / "val2014"}


def textvqa(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    data = [{"question_id": 34602, "question": "what brand is this?", "image_id": "0054c91397f2fe05",
             "answers": ["nokia"] * 8 + ["nokia phone", "nokia"], "image_classes": ["phone"], "set_name": "val"},
            {"question_id": 34603, "question": "what year?", "image_id": "005635e119b9f32f",
             "answers": ["1990"] * 10, "image_classes": ["poster"], "set_name": "val"}]
    for n, q in enumerate(data):
        write_image(root / "train_images" / f"{q['image_id']}.jpg", n)
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_name": "textvqa", "dataset_version": "0.5.1",
                                                             "dataset_type": "val", "data": data}))
    return {"data": root / "TextVQA_0.5.1_val.json", "images": root / "train_images"}


def gqa(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    data = {"20968379": {"imageId": "n288870", "question": "Is the sky blue?", "answer": "yes",
                         "fullAnswer": "Yes, the sky is blue.", "types": {"structural": "verify"}},
            "201640614": {"imageId": "n161313", "question": "What is on the table?", "answer": "cup",
                          "fullAnswer": "The cup is on the table.", "types": {"structural": "query"}}}
    for n, q in enumerate(data.values()):
        write_image(root / "images" / f"{q['imageId']}.jpg", n + 3)
    (root / "testdev_balanced_questions.json").write_text(json.dumps(data))
    return {"data": root / "testdev_balanced_questions.json", "images": root / "images"}


def pope(root: Path) -> dict[str, list[Path] | Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for split in ("random", "adversarial"):
        lines = [{"question_id": n + 1, "image": f"COCO_val2014_{n:012d}.jpg",
                  "text": f"Is there a {w} in the image?", "label": label}
                 for n, (w, label) in enumerate([("dog", "yes"), ("cat", "no"), ("car", "no")])]
        files.append(root / f"coco_pope_{split}.json")
        files[-1].write_text("".join(json.dumps(x) + "\n" for x in lines))
    for n in range(3):
        write_image(root / "val2014" / f"COCO_val2014_{n:012d}.jpg", n)
    return {"data": files, "images": root / "val2014"}


MMBENCH_ROWS = [
    {"index": "0", "question": "What is the colour of the shape?", "hint": "nan", "A": "red", "B": "blue",
     "C": "green", "D": "nan", "answer": "B", "category": "attribute_recognition", "l2-category": "FP-C",
     "split": "dev", "source": "test"},
    {"index": "1", "question": "Which animal is shown?", "hint": "A picture from a zoo.", "A": "cat", "B": "dog",
     "C": "nan", "D": "nan", "answer": "A", "category": "object_localization", "l2-category": "FP-S",
     "split": "dev", "source": "test"},
]


def mmbench(root: Path) -> dict[str, Path]:
    """The dev TSV; row 1's image field names row 0's image (as the release does for shared images)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "MMBench_DEV_EN.tsv"
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category",
               "split", "source"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns, delimiter="\t")
        writer.writeheader()
        writer.writerow({**MMBENCH_ROWS[0], "image": base64.b64encode(image_bytes(5)).decode()})
        writer.writerow({**MMBENCH_ROWS[1], "image": "0"})
    return {"data": path}


def scienceqa(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    problems = {
        "5": {"question": "Which of these states is farthest north?", "choices": ["Ohio", "Maine", "Texas"],
              "answer": 1, "hint": "", "image": "image.png", "task": "closed choice", "grade": "grade2",
              "subject": "social science", "topic": "geography", "category": "Geography", "skill": "",
              "lecture": "", "solution": "", "split": "test"},
        "6": {"question": "What is 1 + 1?", "choices": ["2", "3"], "answer": 0, "hint": "", "image": None,
              "subject": "natural science", "split": "test"},
        "9": {"question": "Which material is this?", "choices": ["wood", "glass"], "answer": 1,
              "hint": "Look at the object.", "image": "image.png", "subject": "natural science", "split": "test"},
        "12": {"question": "Which word is a noun?", "choices": ["run", "cat"], "answer": 1, "hint": "",
               "image": "image.png", "subject": "language science", "split": "val"},
    }
    for pid in ("5", "9", "12"):
        split = problems[pid]["split"]
        out = root / "images" / split / pid / "image.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (60, 36), (int(pid) * 20, 80, 140)).save(out)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"train": [], "val": ["12"], "test": ["5", "6", "9"]}))
    return {"data": root / "problems.json", "annotations": root / "pid_splits.json", "images": root / "images"}


def coco_karpathy(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    images = [{"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg", "imgid": n, "split": split,
               "cocoid": i, "sentences": [{"raw": f"A {c} shape on a plain background.", "tokens": [], "sentid": 0},
                                          {"raw": f"The {c} object in the picture.", "tokens": [], "sentid": 1}]}
              for n, (i, c, split) in enumerate([(11, "red", "test"), (12, "blue", "test"), (13, "pink", "train")])]
    for image in images:
        write_image(root / "val2014" / image["filename"], image["cocoid"])
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return {"data": root / "dataset_coco.json", "images": root}


def coco_official(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    images = [{"id": 11, "file_name": "COCO_val2014_000000000011.jpg", "width": 48, "height": 30},
              {"id": 12, "file_name": "COCO_val2014_000000000012.jpg", "width": 48, "height": 30}]
    anns = [{"image_id": 11, "id": 1, "caption": "A red shape."}, {"image_id": 12, "id": 2, "caption": "Blue."},
            {"image_id": 11, "id": 3, "caption": "Something red."}]
    for image in images:
        write_image(root / "val2014" / image["file_name"], image["id"])
    (root / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return {"data": root / "captions_val2014.json", "images": root / "val2014"}
