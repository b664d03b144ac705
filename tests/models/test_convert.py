import numpy as np
import pytest
import torch

from talelab import paths
from talelab.config import ModelConfig
from talelab.errors import ConfigError, InputError
from talelab.evaluate.likelihood import reference_pieces, score_documents
from talelab.models.convert import export_hf, import_llama2c
from talelab.models.storage import load_model
from talelab.models.transformer import Transformer
from talelab.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def stories260k_loaded(stories260k):
    return load_model(stories260k)


def test_stories260k_scores_the_published_reference_bits_per_byte(stories260k_loaded, shared):
    model, tokenizer, _ = stories260k_loaded
    result = score_documents(model, tokenizer, reference_pieces(shared / paths.TINYSTORIES_VALID))
    assert (result["tokens"], result["bytes"]) == (29212, 62046)
    assert result["bits_per_byte"] == pytest.approx(0.975, abs=0.0005)
    assert result["loss"] == pytest.approx(1.435, abs=0.0005)


def test_hf_llama_export_gives_the_same_logits(stories260k_loaded, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer, _ = stories260k_loaded
    export_hf(model, tokenizer, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode("Once upon a time, Tim saw a big red dog.")]])
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok("Once upon a time", add_special_tokens=False)["input_ids"] == tokenizer.encode("Once upon a time")


def test_untied_gqa_model_exports_with_the_same_logits(tmp_path, bpe_dir):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(bpe_dir)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=48, n_layers=2, n_heads=6,
                                    n_kv_heads=2, context_length=64, tie_embeddings=False)).eval()
    export_hf(model, tokenizer, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.encode("One day, Lily went to the park.")])
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max().item() <= 1e-4


def test_export_of_an_architecture_no_hugging_face_class_computes_names_the_settings(bpe_dir, tmp_path):
    tokenizer = load_tokenizer(bpe_dir)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=4,
                                    positions="learned"))  # RMSNorm and SwiGLU as Llama, absolute positions as GPT-2
    with pytest.raises(ConfigError, match=r"Llama needs positions='learned' \(needs 'rope'\); GPT-2 needs "
                                          r"norm='rmsnorm' \(needs 'layernorm'\), activation='swiglu'"):
        export_hf(model, tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def gpt2_shaped(tokenizer, **settings) -> Transformer:
    torch.manual_seed(0)
    config = dict(vocab_size=tokenizer.vocab_size, d_model=48, n_layers=2, n_heads=4, d_ff=80, context_length=64,
                  norm="layernorm", norm_position="pre", activation="gelu", dropout=0.0)
    return Transformer(ModelConfig(**{**config, **settings})).eval()


@pytest.mark.parametrize("settings", [dict(positions="sinusoidal", bias=True, tie_embeddings=False),
                                      dict(positions="learned", bias=False, tie_embeddings=True, activation="relu")],
                         ids=["sinusoidal-biased-untied", "learned-bias-free-tied-relu"])
def test_layernorm_models_export_to_gpt2_with_the_same_logits(bpe_dir, tmp_path, settings):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(bpe_dir)
    model = gpt2_shaped(tokenizer, **settings)
    if settings["positions"] == "learned":  # learned tables start at zero-mean noise: make positions matter
        torch.nn.init.normal_(model.pos_embed.weight, std=0.5)
    export_hf(model, tokenizer, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode("One day, Lily went to the park. She saw a dog.")]])
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4 and ours.std() > 0.1


@pytest.mark.parametrize("preset", ["ts-1m", "ts-5m", "ts-10m", "ts-15m", "ts-35m"])
def test_the_seed_s_presets_export_where_gpt2_computes_them_and_say_why_not_where_it_cannot(bpe_dir, tmp_path,
                                                                                           preset):
    from talelab.presets import PRESETS
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(bpe_dir)
    shape = {k: v for k, v in PRESETS[preset]["model"].items() if k in ("positions", "norm", "norm_position",
                                                                          "activation", "bias", "tie_embeddings")}
    model = gpt2_shaped(tokenizer, **shape)  # the preset's architecture at a test's width
    if shape["norm_position"] == "post":  # ts-1m, ts-5m, ts-35m: GPT-2 normalises before each sublayer only
        with pytest.raises(ConfigError, match="norm_position='post'"):
            export_hf(model, tokenizer, tmp_path / "hf")
        return
    export_hf(model, tokenizer, tmp_path / "hf")
    ids = torch.tensor([tokenizer.encode("Once upon a time there was a cat.")])
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()(ids).logits
        assert (model(ids)[0] - theirs).abs().max().item() <= 1e-4


def test_truncated_llama2c_checkpoint_is_refused_with_its_size(tmp_path, shared):
    data = (shared / paths.STORIES260K_MODEL).read_bytes()
    broken = tmp_path / "broken.bin"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"broken\.bin: \d+ bytes but header"):
        import_llama2c(broken)


def test_imported_weights_match_the_file(shared):
    model = import_llama2c(shared / paths.STORIES260K_MODEL)
    raw = np.fromfile(shared / paths.STORIES260K_MODEL, dtype=np.float32)
    assert np.array_equal(model.embed.weight.detach().numpy().ravel(), raw[7:7 + 512 * 64])


def test_llama2c_export_reads_back_byte_for_byte(stories260k, shared, tmp_path):
    from talelab.models.convert import export_llama2c

    model, _, _ = load_model(stories260k)
    written = export_llama2c(model, tmp_path / "stories260K.bin")
    assert written.read_bytes() == (shared / paths.STORIES260K_MODEL).read_bytes()
