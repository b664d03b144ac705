"""llama.cpp runs talelab's GGUF export and writes the same greedy story (issue 16: the path to llama.cpp).

For each model given (stories260K from the data root by default; add a Llama-shaped talelab model or run
directory, e.g. the demo's runs/demo/model), the script exports it with `talelab convert gguf`, loads the file in
llama.cpp through llama-cpp-python, and compares, for each prompt:
- the token ids llama.cpp's tokenizer gives (with its beginning-of-story token) against talelab's;
- the greedy continuation (temperature 0, no repetition penalty) of `--tokens` tokens, token for token.
It prints a table and exits non-zero on any difference. llama-cpp-python compiles llama.cpp at install (about ten
minutes on two cores; `pip install llama-cpp-python`), which is why this is a script and not a CI test; CI reads the
exported file back with the gguf package instead (tests/models/test_gguf.py).

    python benchmarks/gguf_check.py [--model runs/demo/model] [--tokens 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from talelab import paths
from talelab.config import SamplingConfig
from talelab.generate import generate
from talelab.models.convert import convert_llama2c
from talelab.models.llamacpp import export_gguf
from talelab.models.storage import load_model

PROMPTS = ("", "Once upon a time", "Lily and Ben went to the park. They saw")


def compare(model_dir: Path, gguf_path: Path, tokens: int) -> list[dict]:
    from llama_cpp import Llama  # deferred: llama-cpp-python is this script's own dependency, not talelab's

    model, tokenizer, _ = load_model(model_dir)
    export_gguf(model, tokenizer, gguf_path, name=model_dir.name)
    llm = Llama(model_path=str(gguf_path), n_ctx=model.config.context_length, n_threads=2, verbose=False)
    rows = []
    for prompt in PROMPTS:
        ours_prompt = tokenizer.encode(prompt, bos=True)
        theirs_prompt = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        steps = min(tokens, model.config.context_length - len(ours_prompt))
        ours = generate(model, ours_prompt, SamplingConfig(temperature=0.0, max_new_tokens=steps),
                        tokenizer.eos_id)[0]
        theirs = []
        for token in llm.generate(ours_prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if token == tokenizer.eos_id or len(theirs) == steps:
                break
            theirs.append(token)
        llm.reset()
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        rows.append({"model": model_dir.name, "prompt": prompt or "(BOS only)",
                     "same_prompt_ids": ours_prompt == theirs_prompt, "talelab_tokens": len(ours),
                     "llama_cpp_tokens": len(theirs), "equal_prefix": same, "identical": ours == theirs,
                     "text": tokenizer.decode(theirs)[:80]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="more talelab model or run directories")
    parser.add_argument("--tokens", type=int, default=200, help="greedy tokens to compare per prompt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        models = [convert_llama2c(paths.STORIES260K_MODEL, paths.STORIES260K_TOKENIZER, scratch / "stories260K")]
        rows = []
        for model_dir in [*models, *map(Path, args.model)]:
            rows += compare(model_dir, scratch / f"{model_dir.name}.gguf", args.tokens)
    print("| model | prompt | same prompt ids | talelab tokens | llama.cpp tokens | equal prefix | identical |")
    print("|---|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['prompt']} | {r['same_prompt_ids']} | {r['talelab_tokens']} | "
              f"{r['llama_cpp_tokens']} | {r['equal_prefix']} | {r['identical']} |")
    for r in rows:
        print(f"{r['model']} / {r['prompt']}: {r['text']!r}")
    return 0 if all(r["identical"] and r["same_prompt_ids"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
