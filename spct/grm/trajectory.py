"""One GRM sample, end to end: the prompt shown, the text that came back, and what it means.

Every place that samples the GRM (the RL and RFT phases, the meta RM's data, the per-phase and
final evaluations, the reward pool behind the server and the policy reward) shows an item's
responses in some order (`Shown`), generates, and reads each sample back with `read`: the
engine's sample (spct.sample) with its scores parsed on the template's scale and mapped back to
the item's own order. The rules then judge a `Trajectory` (`correct`, `reward`, `neutral`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spct.grm.parsing import parse_choice, parse_scores
from spct.grm.rules import is_correct, is_neutral, map_back, rule_reward
from spct.item import Item
from spct.sample import Sample, samples_of


@dataclass(frozen=True)
class Shown:
    """One GRM prompt: `item` with its responses shown in `order` (position p shows response
    order[p]), on the template scale (low, high); `choice`: the template picks one response
    (read as 1 for it and 0 for the others) instead of scoring each."""

    item: Item
    order: list[int]
    prompt: str  # the text trained on and recorded
    scale: tuple[float, float]
    sent: str | None = None  # the text sent to the engine when it differs (a hinted RFT prompt)
    choice: bool = False

    @property
    def text(self) -> str:
        return self.prompt if self.sent is None else self.sent


@dataclass(frozen=True)
class Trajectory(Sample):
    """A GRM sample read back: the engine's sample (spct.sample.Sample), the prompt it was
    `shown`, and its scores in the item's order (None when the sample did not parse); the meta
    RM's rating when one was asked for (spct.sampler.GRMSampler.draw)."""

    shown: Shown
    scores: list[float] | None
    meta_score: float | None = None

    @property
    def item(self) -> Item:
        return self.shown.item

    @property
    def correct(self) -> bool:
        """Eq. 10 on the item's scale (a single response is judged on the template's)."""
        return is_correct(self.scores, self.item.rewards, self.shown.scale)

    @property
    def reward(self) -> float:
        """Eq. 11: +1 correct, -1 otherwise (a parse failure included)."""
        return rule_reward(self.scores, self.item.rewards, self.shown.scale)

    @property
    def neutral(self) -> bool:
        return is_neutral(self.scores)

    def record(self) -> dict[str, Any]:
        """The plain form written to generations files and sent over HTTP (with the meta RM's
        rating when it has one)."""
        out = {"order": self.shown.order, "prompt": self.shown.prompt, "text": self.text, "scores": self.scores}
        return out if self.meta_score is None else {**out, "meta_score": self.meta_score}


def read(shown: Shown, result: Mapping[str, Any]) -> list[Trajectory]:
    """The samples of one engine result (the generation of `shown.text`) as trajectories."""
    low, high = shown.scale
    n = shown.item.n

    def parse(text: str) -> list[int] | None:
        return parse_choice(text, n) if shown.choice else parse_scores(text, n, low, high)

    return [Trajectory(s.text, s.token_ids, s.logprobs, s.version, s.prompt_ids, shown,
                       map_back(parse(s.text), shown.order)) for s in samples_of(result)]
