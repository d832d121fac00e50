"""``mmtune config``: print the resolved config, or document every field."""

from __future__ import annotations

import argparse

ACCEPTS_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML file (presets live in configs/)")
    p.add_argument("--fields", action="store_true", help="list every field with its default and meaning")


def run(args: argparse.Namespace) -> int:
    import yaml

    from mmtune.config import describe, load_config, to_dict

    if args.fields:
        for name, default, doc in describe():
            print(f"{name} = {default}\n    {doc}")
        return 0
    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
