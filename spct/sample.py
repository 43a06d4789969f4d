"""One engine sample, as every consumer reads it.

An engine result crosses Ray as a plain dict (spct.engine: `prompt_token_ids`, `version`, and
per sample `text`, `token_ids`, `logprobs`); `samples_of` reads it into `Sample` records, once,
for the GRM and the policy alike. The GRM's `spct.grm.trajectory.Trajectory` is a `Sample` that
adds the prompt it showed and the scores read from it; GRPO batches are built from groups of
samples (`spct.learner.batches.grpo_batch`). A sample becomes a dict again only where it is
written to disk or sent over HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One generated completion: its text and tokens, the log-prob the engine gave each token
    (None unless asked for), the weight version that produced it (0: as loaded) and the token
    ids of the prompt it completes."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    version: int
    prompt_ids: list[int]


def samples_of(result: Mapping[str, Any]) -> list[Sample]:
    """The samples of one engine result (one prompt's generations)."""
    version, prompt_ids = int(result.get("version", 0)), result.get("prompt_token_ids", [])
    return [Sample(s["text"], list(s.get("token_ids", [])), s.get("logprobs"), version, prompt_ids)
            for s in result["samples"]]
