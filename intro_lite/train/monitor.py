"""The answer-conditioned teacher's drift, seen while it happens (`needs.teacher_monitor_every`; InTRO's
`intro.monitor_every`). On a fixed batch of training prompts, the same for the whole run:

* ``teacher_hinted_accuracy``: the teacher's greedy rationale from x ⊕ y, graded against y: does it
  still read the hint? (1.0 at the start on the tiny choice task; a collapsed teacher loses it.)
* ``teacher_kl_to_start``: KL(q_t ‖ q₀) per token, along the gold solutions z*, between the teacher and
  the start model (the adapter disabled) under the same hint: how far the teacher has moved.
* ``teacher_hint_leak`` / ``teacher_hint_leak_start``: the teacher's (the start model's) mean mass on the
  answer's tokens at the positions of z* before its final answer: does the hint leak into the rationale?

No random numbers are drawn (greedy decoding, prompts picked by a private generator), so a run with the
monitor logs the same training figures as one without it. Measured on rank 0 only.
"""

from __future__ import annotations

import contextlib
import random

import torch

from intro_lite.forward import suffix_logits
from intro_lite.rewards import problem_dict


KEYS = ("teacher_hinted_accuracy", "teacher_kl_to_start", "teacher_hint_leak", "teacher_hint_leak_start")


def make_monitor(setup, problems, xy_ids, grader, *, seed: int, max_new_tokens: int) -> TeacherMonitor | None:
    """The monitor the objective's needs ask for (rank 0 only), or None."""
    from intro_lite.train import dist

    if not (setup.needs.posterior and setup.needs.teacher_monitor_every and dist.is_main()):
        return None
    return TeacherMonitor(setup, problems, xy_ids, grader, seed=seed, prompts=setup.needs.teacher_monitor_prompts,
                          max_new_tokens=max_new_tokens)


class TeacherMonitor:
    def __init__(self, setup, problems, xy_ids, grader, *, seed: int, prompts: int, max_new_tokens: int):
        self.setup, self.grader, self.max_new_tokens = setup, grader, max_new_tokens
        self.every = setup.needs.teacher_monitor_every
        tok = setup.tokenizer
        picked = sorted(random.Random(seed).sample(range(len(problems)), min(prompts, len(problems))))
        self.problems = [problems[i] for i in picked]
        self.xy = [xy_ids[i] for i in picked]
        # z* up to its last "\boxed{": the positions before the answer is written; y's own token ids.
        self.solutions, self.before_answer, self.answer_ids = [], [], []
        for p in self.problems:
            ids = tok(p.solution, add_special_tokens=False)["input_ids"]
            cut = p.solution.rfind("\\boxed{")
            head = len(tok(p.solution[:cut], add_special_tokens=False)["input_ids"]) if cut > 0 else len(ids)
            self.solutions.append(ids)
            self.before_answer.append(min(head, len(ids)))
            self.answer_ids.append(sorted(set(tok(p.answer, add_special_tokens=False)["input_ids"])))

    def _teacher(self):
        """The context in which the policy's parameters are the teacher's (as forward_passes runs it)."""
        needs, model = self.setup.needs, self.setup.model
        if needs.frozen_posterior:
            return model.disable_adapter()
        if self.setup.teacher is not None:
            return self.setup.teacher.swapped_in()
        return contextlib.nullcontext()

    def record(self, step: int) -> dict[str, float | None]:
        """The drift keys of step `step`'s metrics record: measured before its update on steps 1, 1 + every,
        ... (so step 1 holds the start), null on the others."""
        return self.measure() if (step - 1) % self.every == 0 else dict.fromkeys(KEYS)

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        model = self.setup.model
        was_training = model.training
        model.eval()
        try:
            with self._teacher():
                completions = self._greedy(self.xy)
            kl, leak, leak_start = self._kl_and_leak()
        finally:
            model.train(was_training)
        grades = self.grader.grade([(problem_dict(p), text) for p, text in zip(self.problems, completions)])
        return {"teacher_hinted_accuracy": sum(g.correct for g in grades) / len(grades), "teacher_kl_to_start": kl,
                "teacher_hint_leak": leak, "teacher_hint_leak_start": leak_start}

    def _greedy(self, prompts: list[list[int]]) -> list[str]:
        tok, model = self.setup.tokenizer, self.setup.model
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left-padded
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=self.max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=tok.eos_token_id)
        return tok.batch_decode(out[:, width:], skip_special_tokens=True)

    def _kl_and_leak(self) -> tuple[float, float, float]:
        """KL(q_t ‖ q₀) per token over every z* position, and the teacher's and the start model's mean mass on
        y's tokens before the answer. One row at a time: a [T, V] slice, never the batch's [B, T, V]."""
        model, pad = self.setup.model, self.setup.pad_id
        kl_sum = leak_sum = leak0_sum = 0.0
        kl_n = leak_n = 0
        for xy, z, head, y in zip(self.xy, self.solutions, self.before_answer, self.answer_ids):
            with self._teacher():
                logq = torch.log_softmax(suffix_logits(model, [xy], [z], pad)[0][0, : len(z)].float(), -1)
            with model.disable_adapter():
                logq0 = torch.log_softmax(suffix_logits(model, [xy], [z], pad)[0][0, : len(z)].float(), -1)
            kl_sum += float((logq.exp() * (logq - logq0)).sum())
            kl_n += len(z)
            if head and y:
                leak_sum += float(logq[:head, y].exp().sum())
                leak0_sum += float(logq0[:head, y].exp().sum())
                leak_n += head
        return kl_sum / max(kl_n, 1), leak_sum / max(leak_n, 1), leak0_sum / max(leak_n, 1)
