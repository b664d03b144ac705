"""Where the real data lives: --data-root > $TALELAB_DATA > ../shared beside the checkout > the hub."""

from __future__ import annotations

import os
from pathlib import Path

from talelab.errors import InputError

# The checkout is three levels above this file (src/talelab/paths.py); ../shared sits beside it.
_CHECKOUT = Path(__file__).resolve().parents[2]


def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The first data root that exists, or None when only the hub is left."""
    if explicit:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise InputError(f"--data-root {root}: no such directory")
        return root
    env = os.environ.get("TALELAB_DATA")
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise InputError(f"TALELAB_DATA={root}: no such directory")
        return root
    beside = _CHECKOUT.parent / "shared"
    if beside.is_dir():
        return beside
    return None


def shared_file(relative: str, explicit_root: str | os.PathLike | None = None) -> Path:
    """Resolve a file of the shared layout (e.g. 'data/tinystories/valid-head.txt') under the data root."""
    root = data_root(explicit_root)
    if root is None:
        raise InputError(
            f"{relative}: no data root found (pass --data-root, set TALELAB_DATA, or place 'shared/' beside "
            f"the checkout at {_CHECKOUT.parent / 'shared'})"
        )
    path = root / relative
    if not path.is_file():
        raise InputError(f"{path}: missing (looked under data root {root}, expected the layout of shared/README.md)")
    return path


# Files of the shared layout that the pipeline uses by name.
TINYSTORIES_TRAIN = "data/tinystories/train-head.txt"
TINYSTORIES_VALID = "data/tinystories/valid-head.txt"
STORIES260K_MODEL = "models/stories260K/stories260K.bin"
STORIES260K_TOKENIZER = "models/stories260K/tok512.bin"
STORIES260K_GREEDY = "models/stories260K/greedy-200.txt"
GPT2_TOKENIZER_DIR = "tokenizers/gpt2"


def resolve_input(name: str | os.PathLike, explicit_root: str | os.PathLike | None = None) -> Path:
    """A user's file as given (absolute or relative to the working directory), else under the data root."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    root = data_root(explicit_root)
    if root is not None and (root / path).exists():
        return root / path
    where = f" or under the data root {root}" if root else " (and no data root was found)"
    raise InputError(f"{name}: no such file{where}")
