import pytest
import torch

from talelab.train.loop import train
from talelab.data.sentences import shuffle_sentences, split_sentences
from talelab.train.objectives import contrastive_loss


@pytest.mark.parametrize("text,expected", [
    ('Lily said, "I like it!" Then she left.', ['Lily said, "I like it!"', "Then she left."]),
    ('"Hi," said Mr. Brown. He smiled.', ['"Hi," said Mr. Brown.', "He smiled."]),
    ('She said, "Wait! Come back." Tom ran.', ['She said, "Wait! Come back."', "Tom ran."]),
    ("The end... Or not? Yes!", ["The end...", "Or not?", "Yes!"]),
    ("It was Lily's toy. She loved it.\nThe sun was up.", ["It was Lily's toy.", "She loved it.", "The sun was up."]),
    ("“Look!” said Sue. “A bird!”", ["“Look!” said Sue.", "“A bird!”"]),
    ("They ate 3.5 cakes with Dr. Sam. Yum.", ["They ate 3.5 cakes with Dr. Sam.", "Yum."]),
])
def test_sentences_of_childrens_stories_respect_quotes_and_abbreviations(text, expected):
    assert split_sentences(text) == expected


def test_shuffling_keeps_every_sentence_and_never_returns_the_original_order():
    story = "Tom had a ball. It was red. He threw it. The dog ran."
    for seed in range(20):
        shuffled = shuffle_sentences(story, torch.Generator().manual_seed(seed))
        assert shuffled != story and sorted(split_sentences(shuffled)) == sorted(split_sentences(story))


def test_contrastive_loss_is_next_token_loss_plus_alpha_over_shuffled_loss():
    from talelab.config import ModelConfig
    from talelab.models.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, context_length=16)).eval()
    real, shuffled = torch.randint(0, 50, (2, 3, 9))
    next_token = model(real[:, :-1], real[:, 1:])[1].item()
    shuffled_loss = model(shuffled[:, :-1], shuffled[:, 1:])[1].item()
    total = contrastive_loss(5.0)(model, (real[:, :-1], real[:, 1:], shuffled[:, :-1], shuffled[:, 1:]))
    assert total.item() == pytest.approx(next_token + 5.0 / (shuffled_loss + 0.01), rel=1e-6)


@pytest.mark.slow
def test_training_with_the_contrastive_objective_runs_and_resumes_exactly(tiny_configs, tmp_path):
    from safetensors.torch import load_file

    from talelab.models.storage import resolve_model_dir

    overrides = dict(objective="contrastive", contrastive_fraction=0.25)
    model_cfg, straight = tiny_configs(tmp_path / "a", max_steps=8, **overrides)
    train(model_cfg, straight, log=lambda *_: None)
    _, half = tiny_configs(tmp_path / "b", max_steps=4, schedule_steps=8, **overrides)
    train(model_cfg, half, log=lambda *_: None)
    _, rest = tiny_configs(tmp_path / "b", max_steps=8, **overrides)
    train(model_cfg, rest, resume=True, log=lambda *_: None)
    a, b = (load_file(str(resolve_model_dir(tmp_path / d) / "model.safetensors")) for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
