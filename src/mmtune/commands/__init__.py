"""One module per ``mmtune`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Keep top-level imports to the standard library; import torch and friends inside ``run``.
"""
