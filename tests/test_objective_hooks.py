"""The objectives' own rows and passes (make_rows / extra_passes) against direct computations."""

import pytest
import torch

from intro_lite.objectives import ObjectiveInputs, PassContext, Row, StepRollouts, get_objective
from intro_lite.objectives.grpo import GrpoConfig
from intro_lite.objectives.iapo import IapoConfig, answer_probe_entropy
from intro_lite.objectives.repro import ReproConfig


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
        self.logprobs = [-0.1 * (t + 1) for t in range(len(token_ids))]  # vLLM's, one per sampled token


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
    latro = get_objective("latro")
    rows = latro.make_rows(_step(tok, [[marked, unmarked]], ["5"], G=2), latro.default_config())
    assert [r.n_loss for r in rows] == [2, 3]
    assert tok.decode(rows[0].suffix) == "x = 2. The answer is \\boxed{5}."
    assert tok.decode(rows[0].suffix[: rows[0].n_loss]) == "x = 2."
    assert tok.eos_token_id not in rows[1].suffix
    assert tok.decode(rows[1].suffix) == "no marker.The answer is \\boxed{5}."
    # Only the kept rollout tokens were sampled: their served logprobs stay, the EOS's and y's have none.
    assert rows[0].served_logprobs == pytest.approx([-0.1, -0.2]) and rows[1].served_logprobs == pytest.approx([-0.1, -0.2, -0.3])


@torch.no_grad()
def test_iapo_probe_is_the_entropy_after_the_whole_marker(tiny_assets):
    from intro_lite.config import load_config
    from intro_lite.policy import load_policy
    from intro_lite.forward import suffix_logits

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


def _fake_logits(prefixes, suffixes, V=64):
    T = max(len(s) for s in suffixes)
    tokens = torch.tensor([s + [0] * (T - len(s)) for s in suffixes])
    mask = torch.tensor([[1.0] * len(s) + [0.0] * (T - len(s)) for s in suffixes])
    scale = torch.tensor([float(len(p)) for p in prefixes]).view(-1, 1, 1)  # J̃ depends on the prefix length
    return torch.arange(V, dtype=torch.float32).expand(len(prefixes), T, V) / scale, tokens, mask


def test_repro_scores_its_end_point_before_eos():
    tok = CharTokenizer()
    z = tok.ids(["a", ".\n", "b", ".\n", "c"]) + [tok.eos_token_id]
    row = Row(0, 0, [tok._id("Q")], [tok._id("Q")], z, len(z), 1.0)
    scored = []

    def logits(prefixes, suffixes):
        scored.extend(prefixes)
        return _fake_logits(prefixes, suffixes)

    T, V = len(z), 7
    inp = ObjectiveInputs(tokens=torch.tensor([z]), mask=torch.ones(1, T), policy_logits=torch.zeros(1, T, V))
    repro = get_objective("repro")
    extra = repro.extra_passes(inp, [row], PassContext(tok, [Answer("5")], logits), repro.default_config())
    assert inp.extra == {}  # returned, not written into the inputs
    assert set(extra) == {"prefix_positions", "prefix_scores"}
    assert extra["prefix_positions"][0].tolist() == [0, 2, 4, 5]  # the end is |z| without EOS
    assert extra["prefix_scores"].shape == extra["prefix_positions"].shape
    assert max(len(p) for p in scored) == 1 + 5 and all(tok.eos_token_id not in p for p in scored)


def test_repro_outcome_advantages_use_std_eps():
    g = torch.Generator().manual_seed(0)
    leaf = torch.randn(4, 5, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    inputs = ObjectiveInputs(tokens=torch.randint(0, 6, (4, 5), generator=g), mask=torch.ones(4, 5), policy_logits=leaf,
                             rewards=torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64),
                             group_ids=torch.zeros(4, dtype=torch.long),
                             extra={"prefix_positions": torch.tensor([[0, 5]] * 4), "prefix_scores": -torch.ones(4, 2)})
    repro, _ = get_objective("repro").compute(inputs, ReproConfig(alpha=0.0, std_eps=0.5))
    grpo, _ = get_objective("grpo").compute(inputs, GrpoConfig(beta=0.0, loss_aggregation="bnpo", std_eps=0.5))
    torch.testing.assert_close(torch.autograd.grad(repro, leaf)[0], torch.autograd.grad(grpo, leaf)[0])
