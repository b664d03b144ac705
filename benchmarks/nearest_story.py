"""Nearest-training-story search: 1,000 generations against 1,000,000 stories, talelab's index against brute force.

The corpus is built from the real shared stories, deterministically (numpy seed 0):
- sentence pool: the sentences of train-head.txt (split_sentences) and of train-head-lowercase.txt (split after
  . ! ? followed by whitespace, since split_sentences wants a capital next): about 119,000 sentences;
- story i takes the sentence count and sentences of train-head story i mod 2,316 (so lengths follow real stories)
  and replaces each sentence, with probability 0.75, by a pool sentence drawn uniformly.
Queries: the first 900 stories of valid-head.txt (never indexed) and 100 indexed stories with their last sentence
dropped (each must find its source: a recall check printed with the timings).

The baseline is scikit-learn's NearestNeighbors(metric="cosine", algorithm="brute") on the same TF-IDF matrix, timed
on the first --baseline-stories stories and extrapolated linearly to the full index (brute force is linear in the
number of stories); its top-1 on that slice is compared with talelab's on the same slice.

    python benchmarks/nearest_story.py [--stories 1000000] [--queries 1000] [--baseline-stories 100000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import re
import resource
import time
from collections.abc import Iterator

import numpy as np
import sklearn
import torch

from talelab import paths
from talelab.data.sentences import split_sentences
from talelab.data.sources import read_documents
from talelab.data.split_view import SplitView
from talelab.evaluate.memorization import NearestStoryIndex

from machine import cpu_name  # benchmarks/machine.py: run as a script, this folder is on sys.path

KEEP_SENTENCE = 0.25


def sentence_pool() -> tuple[list[list[str]], list[str]]:
    """(the sentences of each real train-head story: the templates, the pool of replacement sentences)."""
    root = paths.data_root()
    heads = read_documents(root / "data/tinystories/train-head.txt", format="eot")[:-1]  # the last is cut off
    lowercase = read_documents(root / "data/tinystories/train-head-lowercase.txt", format="blank-line")
    templates = [split_sentences(story) for story in heads]
    pool = [s for sentences in templates for s in sentences]
    pool += [s for piece in lowercase for s in re.split(r"(?<=[.!?])\s+", piece) if s]
    return templates, pool


def synthetic_stories(seed: int = 0) -> Iterator[str]:
    """Synthetic stories without end, built as the module docstring says (prepare_scale.py streams them to disk)."""
    templates, pool = sentence_pool()
    rng = np.random.default_rng(seed)
    for i in itertools.count():
        sentences = templates[i % len(templates)]
        keep = rng.random(len(sentences)) < KEEP_SENTENCE
        picks = rng.integers(0, len(pool), len(sentences))
        yield " ".join(s if k else pool[p] for s, k, p in zip(sentences, keep, picks))


def build_corpus(n_stories: int, seed: int = 0) -> SplitView:
    """The first `n_stories` synthetic stories, spooled to a temporary file and read on demand, as `talelab eval`
    reads a prepared split: the stories are never all in memory, so the peak RSS is the index's."""
    return SplitView.of_texts(itertools.islice(synthetic_stories(seed), n_stories), name="synthetic stories")


def build_queries(stories: SplitView, n_queries: int, n_edited: int) -> tuple[list[str], list[int]]:
    """Held-out validation stories, then `n_edited` indexed stories minus their last sentence (and their indices)."""
    valid = read_documents(paths.data_root() / paths.TINYSTORIES_VALID, format="blank-line")
    sources = [int(i) for i in np.linspace(0, len(stories) - 1, n_edited)]
    edited = [" ".join(split_sentences(stories[i])[:-1]) or stories[i] for i in sources]
    return valid[:n_queries - n_edited] + edited, sources


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stories", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--edited", type=int, default=100, help="queries that are edited indexed stories")
    parser.add_argument("--baseline-stories", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs visible, {args.threads} torch threads; "
          f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, numpy {np.__version__}, "
          f"Python {platform.python_version()}")

    started = time.perf_counter()
    stories = build_corpus(args.stories)
    queries, sources = build_queries(stories, args.queries, args.edited)
    corpus_s = time.perf_counter() - started
    print(f"corpus: {len(stories):,} stories ({sum(map(len, stories)) / len(stories):.0f} characters on average), "
          f"{len(queries):,} queries, built in {corpus_s:.1f} s")

    started = time.perf_counter()
    index = NearestStoryIndex(stories, progress=False)
    build_s = time.perf_counter() - started
    sparse_share = 1 - sum(int(np.isin(c.terms, index.dense_columns).sum()) for c in index.chunks) / index.nnz
    print(f"index build: {build_s:.1f} s ({index.n_terms:,} terms, {len(index.dense_columns)} dense; "
          f"{index.nnz / len(stories):.1f} non-zeros per story, {sparse_share:.0%} of them sparse; "
          f"{index.nbytes / len(stories):.0f} bytes per story, {index.nbytes / 2**20:.0f} MiB); "
          f"peak RSS so far {peak_rss_gib():.2f} GiB")

    started = time.perf_counter()
    scores, found = index.search(queries, k=args.k)
    search_s = time.perf_counter() - started
    # Short templates make exact duplicates in the corpus, so a hit is the source or a story at least as near as it.
    edited = index.vectorizer.transform(queries[len(queries) - args.edited:])
    source_cosines = np.asarray(edited.multiply(index.vectors(sources)).sum(axis=1)).ravel()
    edited_found = int((scores[len(queries) - args.edited:, 0] <= source_cosines + 1e-6).sum())
    print(f"talelab search: {search_s:.1f} s for {len(queries):,} queries x {len(stories):,} stories, top-{args.k} "
          f"({len(queries) / search_s:.1f} queries/s); edited stories whose source is the nearest (ties included): "
          f"{edited_found}/{args.edited}; median nearest cosine of the held-out stories "
          f"{np.median(scores[:len(queries) - args.edited, 0]):.3f}; peak RSS so far {peak_rss_gib():.2f} GiB")

    baseline_search(index, queries, args, search_s)


def baseline_search(index: NearestStoryIndex, queries: list[str], args, search_s: float) -> None:
    """sklearn brute-force cosine kNN on a slice, extrapolated; and talelab on the same slice for agreement."""
    from sklearn.neighbors import NearestNeighbors

    n = min(args.baseline_stories, len(index))
    sliced = NearestStoryIndex(index.stories[:n], progress=False, vectorizer=index.vectorizer)  # same vectors
    matrix = sliced.vectorizer.transform(sliced.stories)
    vectors = index.vectorizer.transform(queries)
    started = time.perf_counter()
    distances, neighbours = NearestNeighbors(n_neighbors=args.k, metric="cosine", algorithm="brute",
                                             n_jobs=args.threads).fit(matrix).kneighbors(vectors)
    baseline_s = time.perf_counter() - started
    extrapolated = baseline_s * len(index) / n
    sliced_scores, sliced_found = sliced.search(queries, k=1)
    same = int((sliced_found[:, 0] == neighbours[:, 0]).sum())
    gap = np.abs((1 - distances[:, 0]) - sliced_scores[:, 0]).max()
    print(f"baseline (sklearn NearestNeighbors brute, cosine, n_jobs={args.threads}): {baseline_s:.1f} s for "
          f"{n:,} stories -> {extrapolated:.0f} s extrapolated to {len(index):,}; talelab is "
          f"{extrapolated / search_s:.1f}x faster")
    print(f"agreement on the {n:,}-story slice: the same nearest story for {same}/{len(queries)} queries, largest "
          f"nearest-cosine difference {gap:.1e}")
    print(f"peak RSS {peak_rss_gib():.1f} GiB")


if __name__ == "__main__":
    main()
