"""SFT on the golden solution z* [paper, InTRO arXiv 2511.09865]: token-mean NLL. Rolls nothing out."""

from __future__ import annotations

from torch import Tensor

from intro_lite.objectives.base import BatchInfo, Needs, Objective, ObjectiveInputs, Row, StepRollouts, register
from intro_lite.objectives.common import batch_info, check_shapes, masked_mean, token_logprobs, zero_loss


SFT_STAT_KEYS = ("nll", "n_tokens")


def sft_loss(
    policy_logits: Tensor, tokens: Tensor, mask: Tensor, *, batch: BatchInfo | None = None
) -> tuple[Tensor, dict[str, float]]:
    """SFT on the golden solution z* [paper]: loss = −Σ log π(z*_t | x, z*<t) / N_tokens, token mean
    over the whole batch (N_tokens = Σ ``batch.lengths``)."""
    check_shapes(policy_logits, tokens, mask)
    mask = mask.bool()
    info = batch_info(batch, mask, None, None)
    n_total = float(info.lengths.sum())
    if n_total == 0 or not bool(mask.any()):
        return zero_loss(policy_logits), dict.fromkeys(SFT_STAT_KEYS, 0.0)
    logp = token_logprobs(policy_logits, tokens, mask)
    loss = -logp.sum() / n_total
    return loss, {"nll": -masked_mean(logp.detach(), mask), "n_tokens": float(mask.sum())}


@register("sft")
class SFT(Objective):
    needs = Needs(gold_solution=True, batch_totals=True)
    stat_keys = SFT_STAT_KEYS

    def make_rows(self, step: StepRollouts, cfg: None = None) -> list[Row]:
        """One row per prompt: the dataset's golden solution ⊕ EOS, the only text tokenised into a suffix."""
        eos, tok = [step.tokenizer.eos_token_id], step.tokenizer
        return [Row(i, step.first_group + g, step.x_ids[i], step.xy_ids[i], ids + eos, len(ids) + 1, 1.0)
                for g, i in enumerate(step.idx)
                if (ids := tok(step.problems[i].solution, add_special_tokens=False)["input_ids"])]

    def compute(self, inputs: ObjectiveInputs, cfg: None = None, *, generator=None) -> tuple[Tensor, dict[str, float]]:
        return sft_loss(inputs.policy_logits, inputs.tokens, inputs.mask, batch=inputs.batch)
