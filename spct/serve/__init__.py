"""`python -m spct.serve`: the GRM as an HTTP reward model for other trainers.

    python -m spct.serve model=PATH                            # http://127.0.0.1:8000
    python -m spct.serve model=PATH meta_rm=PATH port=9000 token=SECRET

Endpoints (docs/serving.md has the request and response shapes):
    POST /score        one query and n responses -> voted per-response rewards
    POST /batch_score  many of those in one call
    POST /openrlhf     OpenRLHF's `--reward.remote_url` contract: prompt+response strings -> [0, 1]
    GET  /health

The HTTP layer (`make_app`) validates and reshapes, and its batcher (`spct.serve.batching`)
gathers concurrent requests into engine batches and groups; scoring goes through any object with
the `Scorer` interface, in production a `GRMScorer` over a `GRMRewardPool` and, optionally, a
meta RM actor. Every request is checked before it reaches the engines: a bad field costs a 4xx
naming it, never engine time, and an oversized body is refused before it is read.
"""

from spct.serve.app import BackgroundServer, make_app
from spct.serve.config import ServeConfig, app_options, register_schema, to_serve_config
from spct.serve.scorer import GRMScorer, Scorer, build_scorer

register_schema()  # Hydra's primary config "serve" (conf/serve.yaml over ServeConfig)

__all__ = ["BackgroundServer", "GRMScorer", "Scorer", "ServeConfig", "app_options", "build_scorer", "make_app",
           "to_serve_config"]
