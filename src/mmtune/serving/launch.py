"""``mmtune serve`` in one process or under ``torchrun`` with the model split over the ranks.

With N > 1 processes the decoder blocks are tensor-parallel over all ranks (the same Megatron plan as
training, :func:`mmtune.distributed.parallelize.apply_tensor_parallel`). Rank 0 runs the HTTP server;
before every generation it broadcasts the prepared request (token ids, pixel values, sampling params
with a fixed seed) and the other ranks run the same generation in lock-step, so the collectives line
up. When the server stops (Ctrl-C, SIGTERM) rank 0 broadcasts a stop and every rank leaves cleanly;
the followers ignore SIGINT/SIGTERM and wait for that stop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
from typing import TYPE_CHECKING, Any, Callable, Optional

from mmtune.inference.engine import Engine, Prepared
from mmtune.inference.request import ChatRequest, Completion

if TYPE_CHECKING:
    from mmtune.serving.api import ServerSettings

logger = logging.getLogger(__name__)
DAY_MINUTES = 24 * 60.0


class LeaderEngine:
    """Rank 0's view of a tensor-parallel engine: every run is first broadcast to the followers."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def describe(self) -> dict:
        return self.engine.describe()

    def prepare(self, request: ChatRequest) -> Prepared:
        prepared = self.engine.prepare(request)
        if prepared.params.seed is None:  # every rank must draw the same tokens
            seed = random.SystemRandom().randrange(2**31)
            prepared = dataclasses.replace(prepared, params=dataclasses.replace(prepared.params, seed=seed))
        return prepared

    def run(self, prepared: Prepared, on_text: Optional[Callable[[str], None]] = None) -> Completion:
        from mmtune.distributed.env import broadcast_object

        broadcast_object(("run", prepared))
        gone = False

        def forward(piece: str) -> None:  # a vanished client must not stop rank 0 alone
            nonlocal gone
            if on_text is None or gone:
                return
            try:
                on_text(piece)
            except Exception:
                gone = True

        return self.engine.run(prepared, forward)

    def stop(self) -> None:
        """Releases the followers."""
        from mmtune.distributed.env import broadcast_object

        broadcast_object(("stop", None))


def follow(engine: Engine) -> int:
    """The loop of ranks > 0: run what rank 0 broadcasts until it says stop; returns how many ran."""
    from mmtune.distributed.env import broadcast_object

    count = 0
    while True:
        kind, prepared = broadcast_object(None)
        if kind == "stop":
            return count
        engine.run(prepared)
        count += 1


def tensor_parallel_plan(tp_mesh: Any) -> Callable[[Any], None]:
    """What splits a model built on the meta device over ``tp_mesh`` before it is filled (each rank then
    reads and holds only its slices), and makes ``llm.cfg`` describe this rank's shard.

    Attention infers its heads from the projection widths, but the KV cache is sized from ``llm.cfg``;
    the shard's config keeps ``head_dim = dim // n_heads`` and divides the head counts by the degree.
    """
    from mmtune.distributed.parallelize import apply_tensor_parallel

    def prepare(model: Any) -> None:
        apply_tensor_parallel(model, tp_mesh)
        llm, tp = model.llm, tp_mesh.size()
        cfg = llm.cfg
        llm.cfg = dataclasses.replace(cfg, dim=cfg.dim // tp, n_heads=cfg.n_heads // tp,
                                      n_kv_heads=(cfg.n_kv_heads or cfg.n_heads) // tp)

    return prepare


def serve(load_engine: Callable[[Optional[str], Optional[Callable[[Any], None]]], Engine],
          settings: "ServerSettings", host: str, port: int, model: str) -> int:
    """Loads ``model`` with ``load_engine(device, prepare)`` (split over the ranks under torchrun by
    ``prepare``; device None is the caller's choice) and serves it with ``settings`` on ``host:port``
    until stopped."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        _serve(load_engine(None, None), settings, host, port, model)
        return 0
    from mmtune.distributed.env import init_distributed, shutdown

    env = init_distributed(tp=world, timeout_minutes=7 * DAY_MINUTES)
    torch.manual_seed(0)
    holder = {"engine": load_engine(str(env.device), tensor_parallel_plan(env.tp_mesh))}
    if env.is_main:
        leader = LeaderEngine(holder["engine"])
        try:
            _serve(leader, settings, host, port, model)
        finally:
            leader.stop()
    else:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        logger.info("rank %d: followed %d requests", env.rank, follow(holder["engine"]))
    shutdown(holder)
    return 0


def _serve(engine: Any, settings: "ServerSettings", host: str, port: int, model: str) -> None:
    from mmtune.serving.api import create_app
    from mmtune.serving.server import make_server

    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: reachable from other machines%s", host,
                       "" if settings.api_key else " and without an API key")
    app = create_app(engine, settings)
    logger.info("serving %s on http://%s:%d (web page at /, API at /v1)", model, host, port)
    try:
        make_server(app, host, port).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; the server has stopped cleanly
        logger.info("server stopped")
