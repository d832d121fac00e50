"""COCO captions in their release layouts: the Karpathy split file (``dataset_coco.json``:
``{"images": [{"filepath", "filename", "cocoid", "split", "sentences": [{"raw"}]}]}``, one split read,
default test) or the official ``captions_val2014.json`` (``{"images": [{"id", "file_name"}],
"annotations": [{"image_id", "caption"}]}``)."""

from __future__ import annotations

from pathlib import Path

from mmtune.errors import DataError
from mmtune.evaluation.benchmarks.common import BenchFiles, ask, get, image_path, read_json, top
from mmtune.evaluation.runner import EvalItem


def _karpathy(data: dict, path: Path, root: Path, split: str) -> list[tuple[int, Path, list[str]]]:
    out = []
    for n, image in enumerate(top(data, "images", path, "the Karpathy COCO layout")):
        where = f"images[{n}]"
        if get(image, "split", path, where) != split:
            continue
        name = get(image, "filename", path, where)
        folder = root / str(image.get("filepath", ""))
        file = folder / name if (folder / name).is_file() else image_path(root, name, path, where)
        captions = [get(s, "raw", path, f"{where}.sentences") for s in get(image, "sentences", path, where)]
        out.append((get(image, "cocoid", path, where), file, captions))
    return out


def _official(data: dict, path: Path, root: Path) -> list[tuple[int, Path, list[str]]]:
    captions: dict = {}
    for n, ann in enumerate(top(data, "annotations", path, "the COCO captions layout")):
        where = f"annotations[{n}]"
        captions.setdefault(get(ann, "image_id", path, where), []).append(get(ann, "caption", path, where))
    out = []
    for n, image in enumerate(top(data, "images", path, "the COCO captions layout")):
        where = f"images[{n}]"
        image_id = get(image, "id", path, where)
        out.append((image_id, image_path(root, get(image, "file_name", path, where), path, where),
                    captions.get(image_id, [])))
    return out


def read_coco_captions(files: BenchFiles, prompt: str) -> list[EvalItem]:
    """One item per image, every caption of it a reference."""
    path = files.only_data("coco-caption")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: expected the Karpathy COCO layout or captions_val2014.json (an 'images' list)")
    if "annotations" in data:
        rows = _official(data, path, files.root())
    else:
        rows = _karpathy(data, path, files.root(), files.split or "test")
    return [EvalItem(ask(prompt, "", str(file), str(image_id)), captions, kind="caption",
                     ident={"image_id": image_id}) for image_id, file, captions in rows]
