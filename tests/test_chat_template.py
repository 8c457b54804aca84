"""data.chat_template: x and x ⊕ y rendered as the user turn of the tokenizer's chat template, in
training and (the same rendering) in the eval."""

import shutil

import pytest

from intro_lite.config import ConfigError, load_config
from intro_lite.data.problems import Problem, encode_prompts

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture
def chat_model(tiny_assets, tmp_path):
    """The tiny test model with a chat template added to its tokenizer."""
    from transformers import AutoTokenizer

    model = tmp_path / "chat-model"
    shutil.copytree(tiny_assets.model_dir, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(model)
    return model


PROBLEMS = [Problem("a", "What is 2+3?", "5"), Problem("b", "Add 1 and 1.", "2")]


def test_off_by_default_and_plain_text_unchanged(chat_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_model)
    assert load_config(None).data.chat_template is False
    texts, ids = encode_prompts(tok, ["What is 2+3?\n"])
    assert texts == ["What is 2+3?\n"] and ids == [tok("What is 2+3?\n")["input_ids"]]


def test_training_renders_x_and_xy_through_the_template(chat_model, tmp_path):
    from transformers import AutoTokenizer

    from intro_lite.train.loop import tokenize_problems

    tok = AutoTokenizer.from_pretrained(chat_model)
    cfg = load_config(None, ["data.chat_template=true", f'output_dir="{tmp_path}"'])
    _, x_ids, xy_ids = tokenize_problems(cfg, tok, PROBLEMS)
    x = tok.decode(x_ids[0])
    assert x.startswith(tok.bos_token or "") and "<|user|>What is 2+3?\n<|end|>" in x and x.endswith("<|assistant|>")
    assert "The final answer is 5." in tok.decode(xy_ids[0]) and tok.decode(xy_ids[0]).endswith("<|assistant|>")
    if tok.bos_token_id is not None:
        assert x_ids[0].count(tok.bos_token_id) == 1  # the template's BOS, not a second one from the tokenizer
    _, plain_x, _ = tokenize_problems(load_config(None), tok, PROBLEMS)
    assert plain_x[0] != x_ids[0]


def test_eval_renders_prompts_as_training_does(chat_model, tmp_path):
    from transformers import AutoTokenizer

    from intro_lite.eval.run import _tokenize, default_settings
    from intro_lite.train.loop import tokenize_problems

    settings = default_settings()
    settings.chat_template, settings.max_new_tokens = True, 16
    prompts, ids, _ = _tokenize(str(chat_model), settings, {"b": PROBLEMS}, console=None)
    cfg = load_config(None, ["data.chat_template=true"])
    _, x_ids, _ = tokenize_problems(cfg, AutoTokenizer.from_pretrained(chat_model), PROBLEMS)
    assert ids["b"] == x_ids and prompts["b"][0].endswith("<|assistant|>")


def test_a_tokenizer_without_template_is_one_line(tiny_assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_assets.model_dir)
    tok.chat_template = None
    with pytest.raises(ConfigError, match=r"data.chat_template = true, but .* has no chat template"):
        encode_prompts(tok, ["x"], chat_template=True)


def test_run_defaults_carry_chat_template(tmp_path):
    from intro_lite.config import to_toml
    from intro_lite.eval.run import default_settings

    (tmp_path / "config.toml").write_text(to_toml(load_config(None, ["eval.source=tiny", "data.chat_template=true"])))
    assert default_settings([tmp_path]).chat_template is True
