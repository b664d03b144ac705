"""Where the real data lives: --data-root > $TALELAB_DATA > ../shared beside the checkout > the hub."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from talelab.errors import InputError

# The checkout is three levels above this file (src/talelab/paths.py); ../shared sits beside it.
CHECKOUT = Path(__file__).resolve().parents[2]


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
    beside = CHECKOUT.parent / "shared"
    if beside.is_dir():
        return beside
    return None


def shared_file(relative: str, explicit_root: str | os.PathLike | None = None) -> Path:
    """A file of the shared layout (e.g. 'data/tinystories/valid-head.txt'): under the data root, else from the hub."""
    root = data_root(explicit_root)
    if root is None:
        return from_hub(relative)
    path = root / relative
    if not path.exists():
        raise InputError(f"{path}: missing (looked under data root {root}, expected the layout of shared/README.md)")
    return path


def from_hub(relative: str) -> Path:
    """Download (once, into the Hugging Face cache) the public original of a shared file."""
    if relative not in HUB_SOURCES:
        raise InputError(f"{relative}: no data root found and no hub source known for it (pass --data-root or set "
                         f"TALELAB_DATA to a folder with the layout of shared/README.md)")
    # deferred: only a download from the hub needs it
    from huggingface_hub import constants, hf_hub_download, hf_hub_url

    repo, files, repo_type, head_bytes = HUB_SOURCES[relative]
    try:
        if head_bytes:  # the first megabytes of a multi-gigabyte file: ask for just those bytes
            if constants.HF_HUB_OFFLINE:
                raise ConnectionError("HF_HUB_OFFLINE is set")
            return download_head(hf_hub_url(repo, files[0], repo_type=repo_type), head_bytes,
                                 Path(constants.HF_HOME) / "talelab" / Path(relative).name)
        local = [Path(hf_hub_download(repo, f, repo_type=repo_type)) for f in files]
    except Exception as e:  # offline, missing, or refused: the user needs the rule and the one-line cause
        cause = " ".join(str(e).split())[:200]
        raise InputError(f"{relative}: no data root found (--data-root, TALELAB_DATA, ../shared beside the checkout) "
                         f"and downloading {repo}/{files[0]} from the Hugging Face hub failed ({type(e).__name__}: "
                         f"{cause})") from None
    return local[0].parent if len(files) > 1 else local[0]  # several files: a folder, such as a tokenizer's


def download_head(url: str, size: int, target: Path) -> Path:
    """The first `size` bytes of `url` (an HTTP range request), cut back to a line end, cached at `target`."""
    if not target.is_file():
        request = urllib.request.Request(url, headers={"Range": f"bytes=0-{size - 1}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read(size)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data[: data.rfind(b"\n") + 1])
        tmp.replace(target)
    return target


# Files of the shared layout that the pipeline uses by name.
TINYSTORIES_TRAIN = "data/tinystories/train-head.txt"
TINYSTORIES_VALID = "data/tinystories/valid-head.txt"
TINYSTORIES_TRAIN_LOWERCASE = "data/tinystories/train-head-lowercase.txt"  # no public original: data root only
STORIES260K_MODEL = "models/stories260K/stories260K.bin"
STORIES260K_TOKENIZER = "models/stories260K/tok512.bin"
STORIES260K_GREEDY = "models/stories260K/greedy-200.txt"
GPT2_TOKENIZER_DIR = "tokenizers/gpt2"


def resolve_input(name: str | os.PathLike, explicit_root: str | os.PathLike | None = None) -> Path:
    """A user's file as given (absolute or relative to the working directory), else under the data root, else
    (for the shared layout's own files, with no data root) from the hub."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    root = data_root(explicit_root)
    if root is not None and (root / path).exists():
        return root / path
    if root is None and str(name) in HUB_SOURCES:
        return from_hub(str(name))
    where = f" or under the data root {root}" if root else " (and no data root was found)"
    raise InputError(f"{name}: no such file{where}")


# The public originals of the shared files, for users with internet and no data root:
# layout path -> (repo id, files in the repo, repo type, bytes to keep from the start (0: all)).
HUB_SOURCES = {
    TINYSTORIES_TRAIN: ("roneneldan/TinyStories", ["TinyStories-train.txt"], "dataset", 2 * 1024 * 1024),
    TINYSTORIES_VALID: ("roneneldan/TinyStories", ["TinyStories-valid.txt"], "dataset", 0),
    STORIES260K_MODEL: ("karpathy/tinyllamas", ["stories260K/stories260K.bin"], "model", 0),
    STORIES260K_TOKENIZER: ("karpathy/tinyllamas", ["stories260K/tok512.bin"], "model", 0),
    GPT2_TOKENIZER_DIR: ("openai-community/gpt2", ["vocab.json", "merges.txt"], "model", 0),
}
