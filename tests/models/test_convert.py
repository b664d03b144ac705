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


def test_export_of_a_non_llama_architecture_names_the_setting(bpe_dir, tmp_path):
    tokenizer = load_tokenizer(bpe_dir)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=4,
                                    positions="learned"))
    with pytest.raises(ConfigError, match="positions='rope'"):
        export_hf(model, tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


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
