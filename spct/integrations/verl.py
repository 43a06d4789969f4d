"""A veRL custom reward function backed by an spct reward server.

    reward.custom_reward_function.path=<site-packages>/spct/integrations/verl.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.group_size=8     # = actor_rollout_ref.rollout.n

veRL calls the function once per trajectory, as each finishes, with keyword arguments
(`data_source`, `solution_str`: the response alone, `ground_truth`, `extra_info`: the dataset
row's `extra_info` column) plus the `reward_kwargs`, and awaits it when it is a coroutine. The
question is not among them: preprocessing must keep it in `extra_info` (`question` by default,
or a list of messages under `prompt`; `query_key` names another). With `group_size`, the
trajectories of one question are sent as a group and the server judges them in one GRM prompt
once all have arrived (or its `group_window_s` has passed). The reward is the response's
`unit_rewards` entry, on [0, 1]; an empty response gets 0 unscored.

The server's address comes from `url` (a reward kwarg) or SPCT_SERVE_URL, its token from
`token` or SPCT_SERVE_TOKEN.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from spct.client import AsyncClient

URL_ENV = "SPCT_SERVE_URL"
_clients: dict[tuple[str, int], AsyncClient] = {}


def _client(url: str, token: str | None) -> AsyncClient:
    """One client per server and event loop (its connections belong to the loop)."""
    key = (url, id(asyncio.get_running_loop()))
    if key not in _clients:
        _clients[key] = AsyncClient(url, token=token)
    return _clients[key]


async def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, *,
                        url: str | None = None, token: str | None = None, group_size: int | None = None,
                        k: int | None = None, meta: bool | None = None, query_key: str = "question",
                        **kwargs: Any) -> dict[str, Any]:
    """{"score": the GRM's reward on [0, 1], "grm_parse_failures": samples that did not parse}."""
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(f"spct reward: no server address (reward kwarg `url` or {URL_ENV})")
    info = extra_info or {}
    question = info.get(query_key, info.get("prompt"))
    if question is None:
        raise ValueError(f"spct reward: extra_info has no {query_key!r} (or 'prompt'): keep the question there "
                         f"when preparing the data; its keys are {sorted(info)}")
    if not solution_str.strip():
        return {"score": 0.0, "grm_parse_failures": 0}
    query = {"query": question} if isinstance(question, str) else {"conversation": list(question)}
    grouped = {"group": True, "group_size": group_size} if group_size else {}
    reply = await _client(url, token).score(responses=[solution_str], k=k, meta=meta, **query, **grouped)
    return {"score": float(reply["unit_rewards"][0]), "grm_parse_failures": reply["parse_failures"]}
