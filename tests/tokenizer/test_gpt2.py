def test_gpt2_encodes_hello_world_as_15496_995(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]


def test_gpt2_uses_endoftext_50256_as_bos_and_eos(gpt2):
    assert (gpt2.bos_id, gpt2.eos_id, gpt2.vocab_size, gpt2.kind) == (50256, 50256, 50257, "gpt2")
    assert gpt2.encode("The end.<|endoftext|>")[-1] == 50256
    assert gpt2.encode("Hi", bos=True, eos=True) == [50256, 17250, 50256]


def test_gpt2_round_trips_text_and_decode_drops_endoftext(gpt2):
    text = "Tom said, â€œIâ€™m sorry.â€ 🤖\n\nThe end."
    assert gpt2.decode(gpt2.encode(text, bos=True, eos=True)) == text
