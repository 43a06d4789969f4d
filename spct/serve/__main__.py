"""`python -m spct.serve`: start the GRM engines and serve until interrupted.

    python -m spct.serve model=PATH [meta_rm=PATH] [port=8000] [host=127.0.0.1] [token=...]
    python -m spct.serve model=PATH dry_run=true      # check the command, print the plan

`model=PATH` and `meta_rm=PATH` are short for `model.path=PATH` and `meta_rm.path=PATH`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
from typing import Any

import hydra
import uvicorn
from omegaconf import DictConfig

from spct import memory
from spct.config import ConfigError, check_sources, local_gpu_problem, path_shorthand
from spct.serve.app import _Server, make_app
from spct.serve.config import TOKEN_ENV, ServeConfig, app_options, load_serve_config, plan
from spct.serve.scorer import build_scorer

log = logging.getLogger("spct.serve")


def serve(c: ServeConfig, token: str | None) -> None:
    """Start the scorer and serve until interrupted."""
    if token is None and not _is_loopback(c.host):
        log.warning(
            "listening on %s without a token: anyone who reaches it can use the GRM "
            "(set token=... or %s)",
            c.host,
            TOKEN_ENV,
        )
    scorer = build_scorer(c)
    # uvicorn re-raises the signal that stopped it; as an exception it lets the engines stop too.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        app = make_app(scorer, token=token, **app_options(c))
        _Server(uvicorn.Config(app, host=c.host, port=c.port, log_level="info")).run()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        scorer.shutdown()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prepare(cfg: DictConfig) -> tuple[ServeConfig, str | None, str | None]:
    """Every check before anything starts (the config, the model paths, the GPUs); returns the
    config, the token and, with dry_run=true, the plan to print instead of serving."""
    c, sources = load_serve_config(cfg)
    warnings = check_sources({"model": (c.model.path, "model"), "meta_rm": (c.meta_rm.path, "model")},
                             strict=not c.dry_run)
    gpu = local_gpu_problem(c.cluster)
    if gpu and not c.dry_run:
        raise ConfigError(f"invalid serve configuration:\n  {gpu}")
    needs, unestimated = memory.serving(c.model.path, c.rollout, c.model.max_model_len, c.cluster.gpu_memory_gib,
                                        c.cluster.num_gpus, meta_rm=c.meta_rm.path,
                                        meta_rm_max_length=c.meta_rm.max_length)
    over = memory.problems(needs, c.cluster.gpu_memory_gib)
    if over and not c.dry_run:
        raise ConfigError("invalid serve configuration: the GPUs cannot hold the server:\n  " + "\n  ".join(over))
    token = c.token or os.environ.get(TOKEN_ENV) or None
    warnings += ([gpu] if gpu else []) + unestimated + over
    return c, token, plan(c, sources, warnings, token is not None, needs) if c.dry_run else None


@hydra.main(config_path=None, config_name="serve", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        c, token, dry_plan = prepare(cfg)
    except ConfigError as e:
        log.error("%s", e)
        sys.exit(1)
    if dry_plan is not None:
        print(dry_plan)
        return
    serve(c, token)


def cli() -> None:
    """`spct-serve` and `python -m spct.serve`: `model=PATH` is short for `model.path=PATH`."""
    sys.argv[1:] = path_shorthand(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
