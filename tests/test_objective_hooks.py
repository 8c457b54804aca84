"""The objectives' own rows and passes (make_rows / extra_passes) against direct computations."""

import pytest
import torch

from intro_lite.objectives import PassContext, Row, StepRollouts, get_objective, make_rows
from intro_lite.objectives.iapo import IapoConfig, answer_probe_entropy


class CharTokenizer:
    """Text -> one id per character; rollout ids may stand for longer pieces (``pieces``). id 0 is EOS."""

    eos_token_id = 0

    def __init__(self, pieces=()):
        self.vocab = ["</s>", *pieces]

    def _id(self, piece):
        if piece not in self.vocab:
            self.vocab.append(piece)
        return self.vocab.index(piece)

    def ids(self, pieces):
        return [self._id(p) for p in pieces]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self._id(c) for c in text]}

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


class Sample:
    def __init__(self, token_ids):
        self.token_ids = token_ids


class Answer:
    def __init__(self, answer):
        self.answer = answer


def _step(tok, rollouts, answers, G):
    idx = list(range(len(answers)))
    x = [[tok._id("Q")] for _ in idx]
    pairs = [(i, Sample(r)) for i, group in zip(idx, rollouts) for r in group]
    return StepRollouts(idx, x, x, tok, [Answer(a) for a in answers], G, pairs, [True] * len(pairs))


def test_latro_rows_keep_the_space_before_y_and_never_append_after_eos():
    tok = CharTokenizer()
    marked = tok.ids(["x", " = 2.", " The", " answer", " is", " 5"]) + [tok.eos_token_id]
    unmarked = tok.ids(["no", " marker", "."]) + [tok.eos_token_id]
    rows = make_rows(get_objective("latro"), _step(tok, [[marked, unmarked]], ["5"], G=2))
    assert [r.n_loss for r in rows] == [2, 3]
    assert tok.decode(rows[0].suffix) == "x = 2. The answer is \\boxed{5}."
    assert tok.decode(rows[0].suffix[: rows[0].n_loss]) == "x = 2."
    assert tok.eos_token_id not in rows[1].suffix
    assert tok.decode(rows[1].suffix) == "no marker.The answer is \\boxed{5}."


@torch.no_grad()
def test_iapo_probe_is_the_entropy_after_the_whole_marker(tiny_assets):
    from intro_lite.config import load_config
    from intro_lite.policy import load_policy, suffix_logits

    cfg = load_config("recipes/tiny.toml", ["model.name_or_path=tiny-test", "data.source=tiny-test",
                                            "eval.source=tiny-test", "model.quantization=none"])
    model, tok = load_policy(cfg, str(tiny_assets.model_dir))
    model.eval()
    x = tok("Start with 3. Add 4.\n")["input_ids"]
    z = tok("3 + 4 = 7.", add_special_tokens=False)["input_ids"]
    ctx = PassContext(tok, [], lambda p, s: suffix_logits(model, p, s, tok.pad_token_id))
    got = answer_probe_entropy([Row(0, 0, x, x, z, len(z), 1.0)], ctx, IapoConfig.probe_marker, (1, len(z)))
    marker = tok(IapoConfig.probe_marker, add_special_tokens=False)["input_ids"]
    for t in range(len(z)):
        logp = torch.log_softmax(model(input_ids=torch.tensor([x + z[:t] + marker])).logits[0, -1].float(), -1)
        assert got[0, t].item() == pytest.approx(-(logp.exp() * logp).sum().item(), rel=1e-4, abs=1e-5), t
