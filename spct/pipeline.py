"""The training pipeline: set-up, the phases in order, checkpoints, a summary.

`Pipeline` owns the components (the GRM's rollout group and weight sync, the learner group, the
tracker, the run's state and its checkpoints in a `spct.run_state.RunStore`) and implements the
recipes' context (`spct.recipes.context.Context`, all a phase recipe may use) with two handles:
sampling the GRM is its `GRMSampler` (`p.grm`, spct.sampler), starting actors on the placement
group its `Actors` (`p.actors`, spct.actors). Classes below these never read the config: the
builders turn config sections into flat arguments.

Features: phases run in the order the config lists; each starts from the previous phase's
Hugging Face checkpoint; a rerun with the same output_dir resumes from the latest checkpoint
(a finished phase is skipped, an unfinished one resumes at its last saved step; a broken
checkpoint falls back to the newest whole one) and the GRM's engines start with the restored
weights; held-out greedy accuracy after each GRM phase.

Raises ConfigError (spct.config) for an invalid configuration, CheckpointError
(spct.run_state) when no checkpoint to resume from is whole, and VersionMismatch
(spct.versions) when an actor finds the wrong stack.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
from pathlib import Path
from typing import Any

from spct.actors import Actors
from spct.card import write_card
from spct.cluster import init_ray
from spct.config import (
    GRM_DEFAULTS,
    GRM_PHASES,
    POLICY_PHASES,
    Config,
    ConfigError,
    split_problems,
)
from spct.data import Item, load_items, load_splits, to_source
from spct.run_state import RunState, RunStore
from spct.sampler import GRMSampler
from spct.tracking import Timings, Tracker

log = logging.getLogger("spct")

# Role of the model each phase saves (what its card says it is).
ROLES = {"model": "grm", "policy": "policy", "meta_rm": "meta_rm"}


class Pipeline:
    """The run: builds the components, runs the phases in order, checkpoints.

    How each phase resumes (a rerun with the same output_dir; `checkpoint.every_steps` sets how
    often a step checkpoint is written):
    - warmup, rl, policy_sft, policy_rl: from the last step checkpoint, with the learner's
      optimizer and schedule state; each step's data and samples are seeded by its step, so the
      steps after it are the uninterrupted run's. rl reads its pre-filter's kept items back
      (rl/prefilter.json) instead of judging again; policy_rl's engines report the restored
      policy's version.
    - rft: sampling goes on after the last chunk recorded in the run state (rft/trajectories.jsonl
      is cut back to it), then its fine-tuning resumes like warmup's.
    - meta_rm: from its beginning. Its training data are seeded samples of the finished GRM, so
      they come out the same; only its own steps are redone.
    - eval: from its beginning (it writes no step checkpoint).
    A finished phase is skipped; a broken checkpoint falls back to the newest whole one.
    """

    def __init__(self, config: Config):
        self.cfg = config
        self.out = Path(config.output_dir)
        self.timings = Timings()
        self.store = RunStore(self.out / "checkpoints")
        self.state = RunState()
        self._rollout = None
        self._sync = None
        self.learner = None
        self.tracker: Tracker | None = None
        self.general: list[Item] = []
        # Starts the actors on the run's placement group (reserved at setup).
        self.actors = Actors(config, lambda: self.state.phase, make_room=self._stop_grm_engines)
        m = config.model
        # Samples the GRM being trained, from its rollout group (started on first use).
        self.grm = GRMSampler(lambda: self.rollout, m.template, m.single_template, m.max_new_tokens, config.seed,
                              timings=self.timings)

    # ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        loaded = self.store.load()
        resumed = loaded is not None
        self.state = loaded or self.state
        # Bad data fails here, before any actor starts.
        self.data = load_splits(seed=self.cfg.seed, **dataclasses.asdict(self.cfg.data))
        self.general = self._general_data()
        problems = split_problems(cfg, self.data)
        if problems:
            raise ConfigError("invalid configuration for this data:\n  " + "\n  ".join(problems))
        init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.num_gpus)
        self.actors.reserve(self.out / "placement.json")
        if self.state.model is None and set(cfg.phases) - set(POLICY_PHASES):
            self.state.model = self._base_model()
        lg = cfg.logger
        self.tracker = Tracker(self.out, kind=lg.kind, project=lg.project, entity=lg.entity,
                               run_name=lg.run_name or self.out.name, mode=lg.mode, config=dataclasses.asdict(cfg),
                               run_id=self.state.wandb_run_id, resume_step=self.state.global_step if resumed else None,
                               resume_phase=self.state.phase if resumed else None,
                               group=lg.group, tags=lg.tags or None)
        self.state.wandb_run_id = self.tracker.run_id
        if resumed:
            log.info("resuming %s: completed %s, at %s step %d", self.out, self.state.completed,
                     self.state.phase, self.state.phase_step)

    @functools.cached_property
    def tokenizer(self):
        """The GRM's tokenizer."""
        from spct.models import load_tokenizer

        return load_tokenizer(self.state.model)

    @property
    def rollout(self):
        """The GRM's rollout group, started on first use (a run of policy phases only never
        starts it) with the latest GRM weights and their version."""
        return self._grm_engines()[0]

    def _grm_engines(self, wait: bool = True):
        """(the GRM's rollout group, its weight sync), started together on first use (with
        `wait=False`, returned while the engines start)."""
        if self._rollout is None:
            self._rollout = self.actors.engines(self.state.model, wait=wait)
            self._sync = self.actors.weight_sync(self._rollout)
            if self.state.weight_version:  # resumed: the engines report the weights' version
                with self.timings("weight_sync"):
                    self._rollout.update_weights_from_path(self.state.model, self.state.weight_version)
        return self._rollout, self._sync

    def _stop_grm_engines(self, why: str | None = None) -> None:
        """Stop the GRM's rollout group (it starts again, with the latest weights, at its next
        use); `why` names who needs its places."""
        if self._rollout is not None:
            if why:
                log.info("%s: the GRM's engines step aside while it samples", why)
            self._rollout.shutdown()
            self._rollout = self._sync = None

    def _base_model(self) -> str:
        m = self.cfg.model
        if m.path is not None:
            return m.path
        from spct.models import ensure_tiny_model

        return str(ensure_tiny_model(self.out / "base_model", preset=m.tiny_preset, seed=self.cfg.seed))

    def _general_data(self) -> list[Item]:
        """rft.general_data's items, read (and checked) before any actor starts."""
        c = self.cfg.rft
        if c.general_data is None or "rft" not in self.cfg.phases:
            return []
        src = to_source(c.general_data, "rft.general_data")
        items = load_items(src, skip_invalid=self.cfg.data.skip_invalid, split="train")
        bare = sum(not it.responses for it in items)
        if bare:
            raise ConfigError(f"invalid configuration for this data:\n  rft.general_data: conversations with a "
                              f"response to train on, but {bare} of its {len(items)} items ({src.describe('train')}) "
                              "are prompts only")
        log.info("rft.general_data: %d items from %s (%s)", len(items), src.describe("train"), items.format)
        return items

    # ---------------------------------------------------------------- the loop
    def run(self) -> RunState:
        from spct.recipes import RECIPES

        for phase in self.cfg.phases:
            if phase in self.state.completed:
                log.info("phase %s already complete, skipping", phase)
                continue
            start = time.perf_counter()
            if phase in POLICY_PHASES:  # the GRM is frozen from here on: its training engines give way
                self._stop_grm_engines()  # to the policy's and the pool's
            if self.state.phase != phase:
                self.state.start_phase(phase)
            result = RECIPES[phase](self)
            self.close_learner()  # each phase starts its own; its places go back to the group
            if phase in GRM_PHASES:  # the GRM changed: held-out greedy accuracy
                result = self.evaluate(phase)
            self.state.timings[phase] = {**self.timings.pop(), "time/total": time.perf_counter() - start}
            self.state.results[phase] = result or {}
            self.state.completed.append(phase)
            self.state.start_phase(None)
            self.store.write(self.state)
            self.actors.flush()
        return self.state

    def cleanup(self) -> None:
        """Stop every actor the run started and close the tracker; one that fails to stop (it
        may be dead already) does not keep the others running."""
        closers = [self.actors.flush]
        closers += [g.shutdown for g in (self.learner, self._rollout) if g is not None]
        closers += self.actors.closers()
        if self.tracker is not None:
            closers.append(self.tracker.finish)
        for close in closers:
            try:
                close()
            except Exception as e:  # noqa: BLE001 - report and go on stopping the rest
                log.warning("cleanup: %s failed: %s", getattr(close, "__qualname__", close), e)
        self.learner = self._rollout = self._sync = self.tracker = None

    def resume_point(self) -> str:
        """Where rerunning the same command resumes, read from what is on disk."""
        st = self.store.read()
        if st is None:
            return "the beginning (no checkpoint yet)"
        done = f"phases done: {', '.join(st.completed) or 'none'}"
        if not st.phase:
            return f"the next phase ({done})"
        sampled = st.rft.items_done
        return f"{st.phase} step {st.phase_step}" + (f", {sampled} items sampled" if sampled else "") + f" ({done})"

    # ---------------------------------------------------------------- operations for recipes
    def new_learner(self, lr: float, warmup_steps: int, total_steps: int, with_reference: bool,
                    task: str = "causal_lm", model: str | None = None):
        """A learner group starting from `model` (default: the latest GRM weights, with the
        optimizer state of an interrupted phase on resume). Its reference model is the weights
        the phase started from, also when it resumes from a step checkpoint."""
        from spct.learner import LearnerSpec

        self.close_learner()
        if (model is None and task == "causal_lm" and self._rollout is None and not self.cfg.rollout.colocate
                and not self.state.weight_version and not self.state.phase_step):
            # A GRM phase's engines serve the weights the phase starts from (the base model or a
            # final checkpoint, never pruned) until its first push: they start now, beside the
            # learner, instead of after it.
            self._grm_engines(wait=False)
        lc = self.cfg.learner
        start = model or self.state.model
        if self.state.phase_start is None:
            self.state.phase_start = start
        spec = LearnerSpec(model=start, task=task, zero_stage=lc.zero_stage, lr=lr, weight_decay=lc.weight_decay,
                           betas=tuple(lc.betas), warmup_steps=warmup_steps, total_steps=total_steps,
                           lr_schedule=lc.lr_schedule, micro_batch_size=lc.micro_batch_size, grad_clip=lc.grad_clip,
                           dtype=self.cfg.model.dtype, with_reference=with_reference,
                           reference_model=self.state.phase_start if with_reference else None, seed=self.cfg.seed,
                           gradient_checkpointing=lc.gradient_checkpointing, num_threads=lc.num_threads or None,
                           share_prefix=lc.share_prefix)
        self.learner = self.actors.learner(spec)
        if self.state.learner_state and task == "causal_lm":
            self.learner.load_state(self.state.learner_state)
        return self.learner

    def close_learner(self) -> None:
        """Stop the learner group (its devices go back to the placement group)."""
        if self.learner is not None:
            self.learner.shutdown()
            self.learner = None

    def sync_weights(self) -> int:
        """Push the learner's weights to every rollout engine; returns the new version."""
        _, sync = self._grm_engines()
        with self.timings("weight_sync"):
            self.state.weight_version += 1
            sync.push_from(self.learner, self.state.weight_version)
        return self.state.weight_version

    def log(self, metrics: dict[str, Any], phase: str) -> None:
        self.state.global_step += 1
        self.tracker.log(metrics, step=self.state.global_step, phase=phase, phase_step=self.state.phase_step)

    def steps(self, total: int, role: str = "model", resume: bool = True, desc: str | None = None):
        """The running phase's steps, with a progress bar, from where a resumed run stopped (from
        0 unless `resume`). Each comes with `done(metrics, **postfix)`, which records the step:
        the phase step, the bar's postfix, the metrics line and, every `checkpoint.every_steps`
        (when `resume`), a checkpoint of the learner as the run's latest `role`."""
        from tqdm import tqdm

        phase, first = self.state.phase, self.state.phase_step if resume else 0
        bar = tqdm(range(first, total), desc=desc or phase, initial=first, total=total)
        for step in bar:
            def done(metrics: dict[str, Any], _step: int = step, **postfix: str) -> None:
                self.state.phase_step = _step + 1
                bar.set_postfix(**postfix)
                self.log(metrics, phase)
                every = self.cfg.checkpoint.every_steps
                if resume and every and self.state.phase_step % every == 0:
                    self.checkpoint(final=False, role=role)

            yield step, done

    def checkpoint(self, final: bool, role: str = "model") -> None:
        """Save the learner's weights in HF format (plus optimizer state unless final) as the
        run's latest `role`: "model" (the GRM), "policy" or "meta_rm" (atomic: `RunStore.save`),
        then drop step checkpoints beyond `checkpoint.keep_last`."""
        name = f"{self.state.phase}-final" if final else f"{self.state.phase}-step{self.state.phase_step:06d}"

        def write_weights(folder: Path, with_optimizer: bool) -> None:
            self.learner.save(str(folder / "model"))
            write_card(folder / "model", ROLES[role], self._card_settings(role),
                       {"run": str(self.out.resolve()), "phase": self.state.phase, "step": self.state.phase_step,
                        "seed": self.cfg.seed})
            if with_optimizer:
                self.learner.save_state(str(folder / "learner"))

        self.store.save(name, self.state, write_weights, role, final)
        self.store.prune(self.state, keep=self.cfg.checkpoint.keep_last)

    def _card_settings(self, role: str) -> dict[str, Any]:
        """What using the model a phase saves needs (spct.card): the GRM's prompting, the
        policy's generation, the meta RM's input."""
        m = self.cfg.model
        if role == "model":
            return {k: getattr(m, k) for k in GRM_DEFAULTS}
        if role == "policy":
            return {"dtype": m.dtype, "max_model_len": m.max_model_len, "max_new_tokens": self.cfg.policy.max_new_tokens}
        return {"dtype": m.dtype, "max_length": self.cfg.meta_rm.max_length,
                "input_template": self.cfg.meta_rm.input_template}

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, phase: str) -> dict[str, float]:
        """Greedy held-out accuracy (Eq. 10) on the eval split, with a 95% interval, in the same
        response orders after every phase (spct.sampler.GRMSampler.greedy_accuracy)."""
        items = self.data.get(self.cfg.eval.split) or []
        if self.cfg.eval.max_items:
            items = items[: self.cfg.eval.max_items]
        if not items:
            log.warning("no %s split to evaluate on", self.cfg.eval.split)
            return {}
        out = self.grm.greedy_accuracy(items, f"eval:{phase}", random.Random(f"{self.cfg.seed}:eval"))
        self.tracker.log({f"eval/{k}": v for k, v in out.items()}, step=self.state.global_step, phase=phase)
        log.info("%s: held-out greedy accuracy %.3f [%.3f, %.3f] on %d items", phase, out["accuracy"], out["ci_low"],
                 out["ci_high"], len(items))
        return out

    # ---------------------------------------------------------------- state on disk
    def save_progress(self) -> None:
        """Record progress that is not a checkpoint (e.g. RFT samples already on disk)."""
        self.store.write(self.state)
