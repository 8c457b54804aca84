"""Alarms: a run that trains but learns nothing says so. Each check reads only the step's metrics
record (and the previous ones); thresholds are the `[alarms]` table. Shown under the progress bar
with the fix to try, written into the record (`alarms`) and counted in the final summary."""

from __future__ import annotations

import math
from collections import deque

FIXES = {
    "truncated": "raise rollout.max_new_tokens (and rollout.max_model_len), or lower rollout.temperature",
    "no_correct": "use easier data (data.levels), a larger rollout.group_size, or check the answer format and "
                  "`reward` (intro-lite probe)",
    "grader_failures": "check the reward function (`reward`): it raises or takes longer than the grader's 5 s timeout",
    "w_collapsed": "the hint does not change the teacher: check data.hint_template, run intro-lite probe",
    "w_clipped": "the teacher and the policy drifted apart: lower train.lr or raise intro.clip_max",
    "adapter_stale": "vLLM did not get the new adapter: see docs/engine.md (adapter hot-swap)",
    "logprob_gap": "vLLM is not sampling with the adapter being trained (a stale or failed adapter sync, another base "
                   "or tokenizer): see docs/engine.md (adapter hot-swap) and docs/reliability.md (logprob gap)",
    "entropy_collapse": "the policy became deterministic: lower train.lr or raise rollout.temperature",
    # Seen on the tiny choice task: one InTRO seed of five went from 30% to 2% held-out in 13 steps, its
    # answer-conditioned teacher (the same adapter) collapsing with it; nothing else fired.
    "teacher_drift": "InTRO's answer-conditioned teacher is running away with the policy: use a teacher that lags "
                     "(intro.teacher = \"ema\" or \"base\", docs/objectives.md) or lower train.lr",
    "accuracy_drop": "training is making the policy worse: lower train.lr; for InTRO check the teacher of a recent "
                     "checkpoint with `intro-lite probe RECIPE --adapter RUN/checkpoints/step-N/adapter`",
}


NOISE_SE = 3.0  # accuracy_drop fires only on a drop beyond this many standard errors of the counts compared


class Alarms:
    def __init__(self, cfg, samples_per_step: int, gap_limit: tuple[float | None, str] | None = None):
        self.cfg, self.samples_per_step = cfg, samples_per_step
        self.gap_limit, self.gap_why = gap_limit or (cfg.logprob_gap_float32, "float32")  # logprob_gap_limit
        self.no_correct_streak, self.last_version = 0, None
        self.accuracies: deque[float] = deque(maxlen=cfg.accuracy_window)  # the rolling window
        self.best_window: float | None = None
        self.hinted_start: float | None = None  # the teacher monitor's first hinted accuracy
        self.counts: dict[str, int] = {}

    def check(self, r: dict) -> list[tuple[str, str]]:
        """(name, one-line message with the fix) for each alarm this step raises."""
        if not self.cfg.enabled:
            return []
        c, out = self.cfg, []

        def alarm(name: str, what: str) -> None:
            self.counts[name] = self.counts.get(name, 0) + 1
            out.append((name, f"step {r['step']}: {what} — {FIXES[name]}"))

        if (t := r.get("truncated_fraction")) is not None and t > c.truncated_fraction:
            alarm("truncated", f"{t:.0%} of rollouts hit rollout.max_new_tokens")
        if r.get("rollout_accuracy") is not None:
            self.no_correct_streak = self.no_correct_streak + 1 if r["rollout_accuracy"] == 0 else 0
            if self.no_correct_streak >= c.no_correct_steps:
                alarm("no_correct", f"no prompt had a correct rationale for {self.no_correct_streak} steps")
        failed = (r.get("grader_timeouts") or 0) + (r.get("reward_errors") or 0)
        if self.samples_per_step and failed / self.samples_per_step > c.grader_failures:
            alarm("grader_failures", f"{failed} of {self.samples_per_step} gradings timed out or raised")
        w, w2 = r.get("w_mean"), r.get("w_sq_mean")
        if w is not None and w2 is not None and r.get("n_tokens"):
            std = math.sqrt(max(w2 - w * w, 0.0))
            if abs(w - 1) < 0.05 and std < c.w_std_min:
                alarm("w_collapsed", f"InTRO's w collapsed to 1 (mean {w:.3f}, std {std:.1e})")
        if (clipped := r.get("w_clipped_frac")) is not None and clipped > c.w_clipped_fraction:
            alarm("w_clipped", f"{clipped:.0%} of InTRO's w clipped at intro.clip_max")
        version = r.get("adapter_version")
        if self.last_version is not None and version is not None and version <= self.last_version:
            alarm("adapter_stale", f"adapter version stayed at {version}")
        self.last_version = version
        if (gap := r.get("logprob_gap_mean")) is not None and self.gap_limit is not None and gap > self.gap_limit:
            alarm("logprob_gap", f"vLLM's and the trainer's logprobs of the rollout tokens differ by {gap:.2g} on "
                                 f"average (max {r.get('logprob_gap_max') or 0:.2g}), over the {self.gap_limit:g} "
                                 f"that {self.gap_why} rounding explains")
        if (h := r.get("entropy")) is not None and r.get("n_tokens", 1) and h < c.entropy_min:
            alarm("entropy_collapse", f"policy entropy {h:.3f} nats/token")
        if (hinted := r.get("teacher_hinted_accuracy")) is not None:
            self.hinted_start = hinted if self.hinted_start is None else self.hinted_start
            kl = r.get("teacher_kl_to_start") or 0.0
            if hinted < c.teacher_drift * self.hinted_start or kl > c.teacher_kl:
                alarm("teacher_drift", f"the teacher's hinted accuracy is {hinted:.2f} (start {self.hinted_start:.2f}), "
                                       f"its KL to the start model {kl:.2f} nats/token")
        if (acc := r.get("rollout_accuracy")) is not None:
            self.accuracies.append(acc)
            if len(self.accuracies) == c.accuracy_window:
                now = sum(self.accuracies) / c.accuracy_window
                best = self.best_window
                if best and now < c.accuracy_drop * best and self._beyond_noise(best, now):
                    alarm("accuracy_drop", f"rollout accuracy over the last {c.accuracy_window} steps is {now:.2f}, "
                                           f"below {c.accuracy_drop:g} x its best {best:.2f}")
                self.best_window = max(best or 0.0, now)
        return out

    def _beyond_noise(self, best: float, now: float) -> bool:
        """The drop exceeds NOISE_SE standard errors of the difference of two window means, each over
        accuracy_window × samples_per_step rollouts (binomial, pooled rate): at 4% → 2% over 5 × 64
        rollouts that is 1.5 SE (not fired), at 30% → 2% 9.7 SE (fired)."""
        n = self.cfg.accuracy_window * max(self.samples_per_step, 1)
        p = (best + now) / 2
        return best - now > NOISE_SE * math.sqrt(max(p * (1 - p), 1e-12) * 2 / n)


def logprob_gap_limit(cfg, *, dtype: str, quantized: bool, dropout: float) -> tuple[float | None, str]:
    """The largest healthy `logprob_gap_mean` for a run's precision (`cfg`: the [alarms] table; `dtype`: the
    trainer's and vLLM's resolved dtype; `quantized`: either base is 4-bit) and the words for it: float32's
    limit plus the 16-bit one and the 4-bit one where they apply (their rounding errors add up at worst).
    None with LoRA dropout: the trainer's pass then drops adapter inputs that vLLM's does not, a gap no
    limit tells from a stale adapter (the figures are still logged)."""
    if dropout > 0:
        return None, "lora.dropout"
    limit, why = cfg.logprob_gap_float32, ["float32"]
    if dtype in ("bfloat16", "float16"):
        limit, why = limit + cfg.logprob_gap_16bit, [dtype]
    if quantized:
        limit, why = limit + cfg.logprob_gap_nf4, [*why, "4-bit (NF4)"]
    return limit, " + ".join(why)
