"""RFT's fine-tuning batches with rft.general_data: `general_mix` of each batch is general
conversations (their best responses the targets), the rest accepted trajectories; conversations
longer than the context are drawn again and counted. The recipe runs for real around a learner
that records its batches (sampling is already done, as on a resumed run)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import layouts
import pytest

from spct.chat import encode_sft
from spct.config import Config
from spct.data import load_items
from spct.item import DataError, Item
from spct.recipes.rft import run_rft
from spct.run_state import RunState


class RecordingLearner:
    def __init__(self) -> None:
        self.batches: list[dict] = []

    def sft_step(self, batch: dict) -> dict:
        self.batches.append(batch)
        return {"loss": 1.0}


class FakeContext:
    """The members run_rft reads (spct.recipes.context.Context), past its sampling."""

    def __init__(self, cfg: Config, out: Path, tokenizer, general: list[Item]) -> None:
        self.cfg, self.out, self.tokenizer, self.general = cfg, out, tokenizer, general
        self.data = {"train": []}
        self.state = RunState()
        self.state.rft.sampling_done = True
        self.learner = RecordingLearner()
        self.logged: list[dict] = []

    def new_learner(self, *args, **kwargs) -> RecordingLearner:
        return self.learner

    def steps(self, total: int, **kwargs):
        for step in range(total):
            yield step, lambda metrics, **postfix: self.logged.append(metrics)

    def timings(self, name: str):
        return contextlib.nullcontext()

    def checkpoint(self, final: bool) -> None:
        pass

    def sync_weights(self) -> int:
        return 1


def _context(tmp_path: Path, tiny_model_dir: Path, general: list[Item], **rft) -> FakeContext:
    from spct.models import load_tokenizer

    cfg = Config(output_dir=str(tmp_path))
    cfg.rft.sft_steps, cfg.rft.batch_size, cfg.rft.warmup_mix = 3, 8, 0.0
    for key, value in rft.items():
        setattr(cfg.rft, key, value)
    cfg.data.kind = "files"
    cfg.model.max_model_len = 512
    p = FakeContext(cfg, tmp_path, load_tokenizer(tiny_model_dir), general)
    (tmp_path / "rft").mkdir(parents=True)
    kept = [{"prompt": f"judge {i}", "completion": f"Scores: {i}", "accepted": True} for i in range(4)]
    (tmp_path / "rft" / "trajectories.jsonl").write_text("".join(json.dumps(t) + "\n" for t in kept))
    return p


def test_general_mix_of_each_batch_is_general_conversations(tmp_path, tiny_model_dir):
    general = load_items(str(layouts.ultrafeedback(tmp_path / "uf")), format="ultrafeedback")  # train_prefs
    p = _context(tmp_path / "run", tiny_model_dir, general, general_mix=0.75)
    run_rft(p)
    targets = {tuple(encode_sft(p.tokenizer, it.conversation, it.responses[it.best])[0]) for it in general}
    assert len(p.learner.batches) == 3
    for batch in p.learner.batches:
        ids = [tuple(x) for x in batch["input_ids"]]
        assert len(ids) == 8 and sum(x in targets for x in ids) == 6  # 0.75 of 8
    assert all(m["general_share"] == 0.75 and m["general_too_long"] == 0 for m in p.logged)


def test_too_long_general_conversations_are_drawn_again_and_counted(tmp_path, tiny_model_dir):
    long = Item([{"role": "user", "content": "word " * 600}], ["ok"], [1.0], id="long")
    short = Item([{"role": "user", "content": "Say hi."}], ["Hi."], [1.0], id="short")
    p = _context(tmp_path / "run", tiny_model_dir, [long, short], general_mix=0.5)
    run_rft(p)
    assert sum(m["general_too_long"] for m in p.logged) > 0
    p = _context(tmp_path / "run2", tiny_model_dir, [long], general_mix=0.5)
    with pytest.raises(DataError, match=r"rft.general_data, item long: field 'responses'.*max_model_len=512"):
        run_rft(p)


def test_without_general_data_the_batches_are_trajectories(tmp_path, tiny_model_dir):
    p = _context(tmp_path / "run", tiny_model_dir, [])
    run_rft(p)
    assert all(len(b["input_ids"]) == 8 for b in p.learner.batches)
    assert all("general_share" not in m for m in p.logged)
