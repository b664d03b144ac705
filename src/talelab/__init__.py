"""talelab: build a small language model that writes stories, end to end.

From Python: `model = talelab.load("runs/demo/model")`, `model.generate("Once upon a time")`, `model.score(texts)`,
and the stages `talelab.prepare`, `talelab.train_tokenizer`, `talelab.train`, `talelab.evaluate` (talelab.api).
"""

import sys
import types

__version__ = "0.1.0"

API = ("Model", "load", "prepare", "train_tokenizer", "train", "evaluate")


def __getattr__(name: str):
    """The API's names, looked up on first use (PEP 562): talelab.api imports torch and every stage (seconds), which
    `import talelab`, `talelab --help` and light modules such as talelab.paths must not pay for."""
    if name in API:
        from talelab import api  # deferred: imports torch

        return getattr(api, name)
    raise AttributeError(f"module 'talelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})


class Package(types.ModuleType):
    """talelab's module type. `train` and `evaluate` name both API functions and subpackages (talelab/train/,
    talelab/evaluate/); importing a submodule binds it on its parent package, which would turn `talelab.train` into
    the subpackage after the first `from talelab.train.loop import ...`. The functions keep those names; code reaches
    the subpackages by import (`from talelab.evaluate.report import run_eval`), which reads sys.modules, never this
    attribute."""

    def __setattr__(self, name: str, value) -> None:
        if not (name in API and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = Package
