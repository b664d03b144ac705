"""Memorization and novelty: how close does each generated story come to the training stories?

Four measures, each with its own tokenizer (none of them is the model's, so they never move with tokenization):
- nearest training story by TF-IDF cosine (scikit-learn TfidfVectorizer: lowercased words of two or more letters
  or digits, English stop words removed; rows L2-normalised, so a copy scores 1);
- the max ROUGE-2 precision of the generation against the training set (rouge-score's tokenizer: lowercase
  alphanumeric runs, no stemming), and which story gives it: by default among the TF-IDF top CANDIDATES stories
  only (a training story with many of the generation's bigrams shares its words too, so it ranks there), or
  exactly over every training story (rouge_search "all": rouge2_search.py, one more streaming pass);
- exact copy / template match / original (see `classify`: word 4-grams of WORD, names masked);
- novelty as a seed project defined it: the mean sacrebleu sentence BLEU (13a tokens, exp smoothing, effective
  order) of a generation against NOVELTY_SAMPLE training stories drawn with a fixed seed, in [0, 1] like the
  report's other BLEU figures; lower is more novel. The headline gives its complement beside it, novelty =
  1 - novelty BLEU (higher is more novel), the direction a figure named Novelty is read in.

The search scales to all of TinyStories (2.1M stories) in bounded memory. The stories are read in one streaming
pass (a SplitView of the prepared split serves every later look-up by seek), counted as scikit-learn's
TfidfVectorizer counts them, and kept as term counts only: an int32 term number and a one-byte count per (story,
term) pair, about 5 bytes x 49 distinct terms + 4 = 250 bytes a real story, 0.5 GB for 2.1M. The float32 TF-IDF
values (fit_transform's, bit for bit) are rebuilt from the counts one chunk at a time.
TF-IDF columns are split in two. The DENSE_TERMS most frequent terms, which hold most of the non-zeros and make
sparse products slow, form a dense block (bfloat16 where the CPU multiplies it natively, else float32) multiplied by
BLAS; the long tail stays sparse (scipy) and is added only where it is non-zero. Training rows are scored CHUNK_ROWS
at a time, each chunk's dense block built once for every batch of queries and dropped, and only scores above each
query's current k-th best are merged, so memory stays at one chunk; the k best are then rescored exactly in float32.
benchmarks/nearest_story.py measures it. On 2.1M synthetic stories (1.9 GB, TinyStories' size; 66 terms a story,
335 bytes) on two shared cores: build 265 s, 1,000 queries 36 s, peak RSS 1.26 GiB in all.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from talelab.errors import ConfigError, InputError
from talelab.evaluate.overlap import bleu
from talelab.evaluate.render import cell
from talelab.evaluate.rouge2_search import max_rouge2_precision
from talelab.plots import score_histogram

CANDIDATES = 10  # TF-IDF neighbours per generation on which ROUGE-2 and the classification are computed
NOVELTY_SAMPLE, NOVELTY_SEED = 100, 0
DENSE_TERMS, CHUNK_ROWS, QUERY_BATCH = 512, 20_000, 1024
RESCORED = 10  # candidates per query ranked in the fast dtype, then rescored exactly
NGRAM = 4  # word n-gram length of the copy classification
COPY_THRESHOLD = 0.8  # share of the generation's n-grams found in the training story
LABELS = ("exact copy", "template match", "original")  # strongest first


class NearestStoryIndex:
    """TF-IDF vectors of the training stories, built in one streaming pass and searched in batches of generations.

    The stories are read once, in order (a list, or a SplitView that streams them from disk), and kept only as the
    sequence given: the index holds term counts, not texts.
    """

    def __init__(self, stories: Sequence[str], dense_terms: int = DENSE_TERMS, chunk_rows: int = CHUNK_ROWS,
                 progress: bool = True, vectorizer=None, dtype: torch.dtype | None = None):
        """Fit TF-IDF on the stories (the vectors of scikit-learn's TfidfVectorizer.fit_transform, bit for bit), or
        reuse a fitted float32 `vectorizer`, such as another index's (its transform's vectors for another set).

        dtype: of the dense part that ranks candidates (default: bfloat16 where the CPU has native bf16 matrix
        products, else float32); the k best are always rescored exactly in float32.
        """
        # deferred: scikit-learn takes about 2 s to import, and only this section uses it
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not len(stories):
            raise InputError("memorization: no training stories to search")
        self.stories, self.chunk_rows, self.progress = stories, chunk_rows, progress
        self.dtype = dtype or fast_matmul_dtype()
        texts = tqdm(stories, total=len(stories), desc="TF-IDF of the training stories", unit="story",
                     disable=None if progress else True)
        if vectorizer is None:
            terms = {}  # term -> number in order of first sight, as CountVectorizer numbers them while it counts
            analyze = TfidfVectorizer(stop_words="english").build_analyzer()
            self.chunks = list(count_terms(texts, analyze, terms, chunk_rows))
            if not terms:  # nothing but stop words and one-letter words
                raise InputError(f"memorization: the {len(stories)} training stories hold no indexable words")
            # scikit-learn then numbers the terms alphabetically, keeping each row's entries in their order.
            alphabetical = sorted(terms)
            renumber = np.empty(len(terms), np.int32)
            renumber[[terms[term] for term in alphabetical]] = np.arange(len(terms), dtype=np.int32)
            self.n_terms = len(terms)
            del terms
            for chunk in self.chunks:
                renumber.take(chunk.terms, out=chunk.terms)
            self.vectorizer = TfidfVectorizer(stop_words="english", dtype=np.float32,
                                              vocabulary={term: i for i, term in enumerate(alphabetical)})
            del alphabetical
            self.vectorizer.idf_ = smooth_idf(self.document_frequency(), len(stories))
        else:
            self.vectorizer, self.n_terms = vectorizer, len(vectorizer.vocabulary_)
            self.chunks = list(count_terms(texts, vectorizer.build_analyzer(), vectorizer.vocabulary_, chunk_rows,
                                           fixed=True))
        self.idf = self.vectorizer.idf_.astype(np.float32)
        order = np.argsort(-self.document_frequency(), kind="stable")
        self.dense_columns, self.sparse_columns = order[:dense_terms], order[dense_terms:]

    def __len__(self) -> int:
        return len(self.stories)

    @property
    def nnz(self) -> int:
        """Stored (story, term) pairs: the non-zeros of the TF-IDF matrix."""
        return sum(len(chunk.terms) for chunk in self.chunks)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored counts (row starts, term numbers, counts): the index's memory apart from the idf."""
        return sum(a.nbytes for chunk in self.chunks for a in chunk)

    def document_frequency(self) -> np.ndarray:
        """Number of stories holding each term."""
        return sum(np.bincount(chunk.terms, minlength=self.n_terms) for chunk in self.chunks)

    def vectors(self, rows: np.ndarray | list[int]) -> sp.csr_matrix:
        """The exact float32 TF-IDF vectors of these stories (row numbers in any order, repeats allowed)."""
        pieces = []
        for row in np.asarray(rows, dtype=np.int64).ravel():
            chunk = self.chunks[row // self.chunk_rows]
            local = row % self.chunk_rows
            pieces.append((chunk.terms[chunk.starts[local]:chunk.starts[local + 1]],
                           chunk.counts[chunk.starts[local]:chunk.starts[local + 1]]))
        lengths = np.fromiter((len(terms) for terms, _ in pieces), np.int64, len(pieces))
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        terms = np.concatenate([t for t, _ in pieces]) if pieces else np.zeros(0, np.int32)
        counts = np.concatenate([c for _, c in pieces]) if pieces else np.zeros(0, np.uint8)
        return self._tfidf(Counts(starts, terms, counts))

    def _block(self, start: int, stop: int) -> sp.csr_matrix:
        """The exact vectors of stories start..stop-1, which lie in one chunk."""
        chunk = self.chunks[start // self.chunk_rows]
        first, last = start % self.chunk_rows, (stop - 1) % self.chunk_rows + 1
        starts = chunk.starts[first:last + 1]
        piece = slice(starts[0], starts[-1])
        return self._tfidf(Counts(starts - starts[0], chunk.terms[piece], chunk.counts[piece]))

    def _tfidf(self, counts: Counts) -> sp.csr_matrix:
        """Count x idf, rows L2-normalised by scikit-learn's own normalize in the stored order: TfidfTransformer's
        float32 values exactly."""
        # deferred: scikit-learn takes about 2 s to import, and only this section uses it
        from sklearn.preprocessing import normalize

        data = counts.counts.astype(np.float32)
        data *= self.idf[counts.terms]
        matrix = sp.csr_matrix((data, counts.terms, counts.starts), shape=(len(counts.starts) - 1, self.n_terms))
        return normalize(matrix, copy=False)

    def search(self, queries: list[str], k: int = 1, batch_size: int = QUERY_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """(cosines, story indices), each of shape (len(queries), k), best first: each query's k nearest stories."""
        n = len(self.stories)
        k = min(k, n)
        # Chunks grow 4x from RESCORED rows up to chunk_rows: each query's k-th best rises quickly, so every chunk
        # passes few scores to the merge (a first chunk of chunk_rows would pass them all).
        warmup = [RESCORED * 4**i for i in range(12) if RESCORED * 4**i < min(n, self.chunk_rows)]
        bounds = sorted({0, *warmup, *range(self.chunk_rows, n, self.chunk_rows), n})
        batches = [self._query_batch(queries[start:start + batch_size]) for start in range(0, len(queries), batch_size)]
        if not batches:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        width = min(max(k, RESCORED), n)
        # -1 stands for "none yet": TF-IDF vectors are non-negative, so every cosine beats it.
        best = [(torch.full((vectors.shape[0], width), -1.0), torch.zeros((vectors.shape[0], width), dtype=torch.long))
                for vectors, _, _ in batches]
        # Each chunk's dense block is built from its counts once, serves every batch of queries and is overwritten by
        # the next: the index never holds the dense part of all stories (2.1M x 512 bf16 would be 2.2 GB). Buffers
        # reused from chunk to chunk spare the page faults of fresh tens of MB each time.
        rows_max = min(n, self.chunk_rows)
        dense_float = np.zeros((rows_max, len(self.dense_columns)), np.float32)
        dense = torch.empty(dense_float.shape, dtype=self.dtype)
        scores = [torch.empty((rows_max, query_dense.shape[1]), dtype=self.dtype) for _, query_dense, _ in batches]
        for start, stop in tqdm(list(zip(bounds, bounds[1:])), desc="nearest stories", unit="chunk",
                                disable=None if self.progress else True):
            size = stop - start
            block = self._block(start, stop)
            block[:, self.dense_columns].toarray(out=dense_float[:size])
            dense[:size].copy_(torch.from_numpy(dense_float[:size]))
            sparse = block[:, self.sparse_columns]  # (rows, V - D)
            for b, (_, query_dense, query_sparse) in enumerate(batches):
                chunk_scores = torch.matmul(dense[:size], query_dense, out=scores[b][:size])  # (size, Q)
                # The rare terms touch few (story, query) pairs: add them where they are, no dense pass.
                tail = (sparse @ query_sparse).tocoo()
                at = torch.from_numpy(tail.row.astype(np.int64)), torch.from_numpy(tail.col.astype(np.int64))
                chunk_scores[at] += torch.from_numpy(tail.data).to(self.dtype)
                best[b] = merge_top_k(chunk_scores, start, *best[b])
        found = [self.rescore(vectors, rows.numpy(), k) for (vectors, _, _), (_, rows) in zip(batches, best)]
        return np.concatenate([s for s, _ in found]), np.concatenate([i for _, i in found])

    def _query_batch(self, queries: list[str]):
        """(exact vectors, dense part transposed in self.dtype, sparse part transposed) of a batch of queries."""
        vectors = self.vectorizer.transform(queries).astype(np.float32)
        query_dense = torch.from_numpy(vectors[:, self.dense_columns].toarray()).to(self.dtype).T.contiguous()
        return vectors, query_dense, vectors[:, self.sparse_columns].T.tocsc()  # (D, Q), (V - D, Q)

    def rescore(self, vectors, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact float32 cosines of each query with its candidate rows, and the k best of them, best first."""
        n_queries, width = rows.shape
        candidates = self.vectors(rows.ravel())
        exact = np.asarray(candidates.multiply(vectors[np.repeat(np.arange(n_queries), width)]).sum(axis=1))
        exact = exact.reshape(n_queries, width).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(rows, order, 1)


class Counts(NamedTuple):
    """Term counts of consecutive stories in CSR layout: story i holds terms[starts[i]:starts[i + 1]]."""

    starts: np.ndarray  # int32, one more than the stories
    terms: np.ndarray  # int32 term numbers
    counts: np.ndarray  # uint8 when every count fits (nearly always), else the smallest unsigned type that does


def count_terms(texts: Iterable[str], analyze, terms: dict, chunk_rows: int, fixed: bool = False) -> Iterator[Counts]:
    """CountVectorizer's counting loop, chunk_rows stories at a time. Terms are numbered in `terms`: new ones in
    order of first sight, or skipped when `fixed`."""
    numbers, counts, starts = [], [], [0]
    for text in texts:
        counter = {}
        for term in analyze(text):
            number = terms.get(term)
            if number is None:
                if fixed:
                    continue
                number = terms[term] = len(terms)
            counter[number] = counter.get(number, 0) + 1
        numbers.extend(counter)
        counts.extend(counter.values())
        starts.append(len(numbers))
        if len(starts) > chunk_rows:
            yield counted(starts, numbers, counts)
            numbers, counts, starts = [], [], [0]
    if len(starts) > 1:
        yield counted(starts, numbers, counts)


def counted(starts: list[int], numbers: list[int], counts: list[int]) -> Counts:
    """A chunk's lists as compact arrays, each story's terms sorted by number as CountVectorizer sorts them."""
    matrix = sp.csr_matrix((np.array(counts, np.int32), np.array(numbers, np.int32), np.array(starts, np.int32)),
                           shape=(len(starts) - 1, max(numbers, default=0) + 1))
    matrix.sort_indices()
    top = int(matrix.data.max()) if matrix.nnz else 0
    return Counts(matrix.indptr, matrix.indices, matrix.data.astype(np.min_scalar_type(top)))


def smooth_idf(document_frequency: np.ndarray, n_stories: int) -> np.ndarray:
    """TfidfTransformer's smoothed idf, ln((1 + n) / (1 + df)) + 1, in its float32 operations and order."""
    df = document_frequency.astype(np.float32)
    df += 1.0
    idf = np.full_like(df, fill_value=n_stories + 1, dtype=np.float32)
    idf /= df
    np.log(idf, out=idf)
    idf += 1.0
    return idf


def fast_matmul_dtype() -> torch.dtype:
    """bfloat16 where oneDNN runs it natively (AVX512-BF16 / AMX: about 4x float32 here), else float32."""
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):  # a private probe: fall back to the safe choice if it moves
        return torch.float32


def merge_top_k(scores: torch.Tensor, offset: int, best_scores: torch.Tensor, best_rows: torch.Tensor):
    """Each query's k best (score, row) after adding a (rows, queries) block of scores whose first row is `offset`.

    Only scores above a query's current k-th best can enter, and after the first chunk few do: merging just those
    is much cheaper than a top-k over every block. Ties keep the earlier row.
    """
    n_queries, k = best_scores.shape
    rows, queries = (scores > best_scores[:, -1].to(scores.dtype)).nonzero(as_tuple=True)
    all_values = torch.cat([best_scores.flatten(), scores[rows, queries].float()])
    all_rows = torch.cat([best_rows.flatten(), rows + offset])
    all_queries = torch.cat([torch.arange(n_queries).repeat_interleave(k), queries])
    # One sort groups by query, best first: cosines lie in [-1, 1], so query * 4 + (1 - cosine) orders both.
    order = torch.sort(all_queries.double() * 4 + (1 - all_values.double()), stable=True).indices
    counts = torch.bincount(all_queries, minlength=n_queries)
    rank = torch.arange(len(order)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    keep = order[rank < k]
    return all_values[keep].view(n_queries, k), all_rows[keep].view(n_queries, k)


# --- copies, templates and originals ------------------------------------------------------------------------------

# Names TinyStories uses most, so that a name is found even at a sentence start or in lowercased text.
COMMON_NAMES = frozenset("""
lily tom ben tim timmy sue sara sarah sam max anna lucy mia jack jill bob bobby billy joe john kate katie amy emma
mary molly ellie ella jane jenny lisa mike jake jim jimmy dan danny leo zoe rose daisy spot buddy fluffy mittens
whiskers rex bella kitty lola luna oliver ollie peter pete sally susie nick rosie grace noah liam ava mark alex
""".split())
WORD = re.compile(r"[A-Za-z0-9]+")
_TOKEN = re.compile(r"[A-Za-z0-9]+|[.!?\n\"“”]")  # words, plus the marks after which a sentence (or speech) starts
NAME = "<name>"


def find_names(text: str) -> set[str]:
    """Lowercased names: words capitalised somewhere other than a sentence or quotation start, or in COMMON_NAMES."""
    names, starts = set(), True
    for token in _TOKEN.findall(text):
        if not token[0].isalnum():
            starts = True
            continue
        lower = token.lower()
        if lower in COMMON_NAMES or (token[0].isupper() and not starts and token != "I"):
            names.add(lower)
        starts = False
    return names


def words_of(text: str, mask_names: bool) -> list[str]:
    """Lowercased words (WORD); with mask_names every occurrence of a name found anywhere in the text becomes NAME."""
    words = [w.lower() for w in WORD.findall(text)]
    if not mask_names:
        return words
    names = find_names(text)
    return [NAME if w in names else w for w in words]


def containment(words: list[str], source_words: list[str], n: int = NGRAM) -> float:
    """Share of the n-grams of `words` that also occur in `source_words` (0 when `words` has fewer than n)."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    source = {tuple(source_words[i:i + n]) for i in range(len(source_words) - n + 1)}
    return sum(g in source for g in grams) / len(grams)


def classify(generation: str, source: str) -> dict:
    """Exact copy, template match or original, with the overlaps behind the label.

    overlap: share of the generation's word 4-grams found verbatim in the source; masked_overlap: the same after
    masking names (find_names) in both. Exact copy: overlap >= COPY_THRESHOLD and every name of the generation
    occurs in the source. Template match: otherwise masked_overlap >= COPY_THRESHOLD (the same text with other
    names). Original: neither.
    """
    plain = containment(words_of(generation, False), words_of(source, False))
    masked = containment(words_of(generation, True), words_of(source, True))
    same_names = find_names(generation) <= set(words_of(source, False))
    label = ("exact copy" if plain >= COPY_THRESHOLD and same_names
             else "template match" if masked >= COPY_THRESHOLD else "original")
    return {"label": label, "overlap": round(plain, 4), "masked_overlap": round(masked, 4)}


# --- novelty and ROUGE ---------------------------------------------------------------------------------------------


def novelty_bleu(generations: list[str], train_stories: Sequence[str], sample_size: int = NOVELTY_SAMPLE,
                 seed: int = NOVELTY_SEED) -> list[float]:
    """Each generation's mean sentence BLEU, in [0, 1] like the report's other BLEU figures, against the same
    `sample_size` training stories."""
    # Drawing indices picks the stories random.sample would pick from a list, and reads only those.
    picks = random.Random(seed).sample(range(len(train_stories)), min(sample_size, len(train_stories)))
    references = [train_stories[i] for i in picks]
    return [sum(bleu(g, [r]) for r in references) / len(references) for g in generations]


def novelty_figures(mean_novelty_bleu: float) -> dict:
    """A set's mean novelty BLEU (lower: closer to no training story) and its complement, novelty = 1 - novelty BLEU
    (higher: further from the training stories), both rounded to 4 places."""
    return {"novelty_bleu": round(mean_novelty_bleu, 4), "novelty": round(1 - mean_novelty_bleu, 4)}


def max_rouge2(generations: list[str], train_stories: Sequence[str], neighbours: np.ndarray, search: str,
               progress: bool = True) -> list[tuple[float, int]]:
    """Per generation, (its highest ROUGE-2 precision against a training story, that story's index; -1 when no
    story shares a bigram): among its TF-IDF `neighbours` (search "candidates", nearest first on a tie) or exactly
    over every training story in one streaming pass on every core (search "all", the earliest story on a tie)."""
    if search == "all":
        scores, stories = max_rouge2_precision(generations, train_stories, progress=progress)
        return [(float(score), int(story)) for score, story in zip(scores, stories)]
    if search != "candidates":
        raise ConfigError(f"--rouge-search {search!r}: choose candidates or all")
    found = []
    for generation, rows in zip(generations, neighbours):
        scores, best = max_rouge2_precision([generation], [train_stories[j] for j in rows], workers=1)
        found.append((float(scores[0]), int(rows[best[0]]) if best[0] >= 0 else -1))
    return found


# --- the report section --------------------------------------------------------------------------------------------

_cached_index: NearestStoryIndex | None = None


def index_for(stories: Sequence[str], progress: bool = True) -> NearestStoryIndex:
    """The index of these stories, reused when the same sequence comes again (a sweep asks once per setting)."""
    global _cached_index
    if _cached_index is None or _cached_index.stories is not stories or len(_cached_index) != len(stories):
        _cached_index = None  # free the old one before building the next
        _cached_index = NearestStoryIndex(stories, progress=progress)
    _cached_index.progress = progress
    return _cached_index


def memorization_section(generations: list[str], train_stories: Sequence[str], out_dir: Path, top: int = 5,
                         progress: bool = True, rouge_search: str = "candidates") -> dict:
    """Nearest training story, max ROUGE-2 precision (see `max_rouge2` for `rouge_search`), copy classification and
    novelty BLEU of the generations."""
    if not generations:
        raise InputError("memorization: no generated stories to compare")
    index = index_for(train_stories, progress)
    cosines, neighbours = index.search(generations, k=CANDIDATES)
    rouge2 = max_rouge2(generations, train_stories, neighbours, rouge_search, progress)
    records = []
    for i, generation in enumerate(generations):
        candidates = [train_stories[j] for j in neighbours[i]]
        verdicts = [classify(generation, c) for c in candidates]
        strongest = min(range(len(verdicts)), key=lambda j: (LABELS.index(verdicts[j]["label"]),
                                                             -verdicts[j]["masked_overlap"]))
        records.append({"nearest": int(neighbours[i][0]), "cosine": round(float(cosines[i][0]), 4),
                        "rouge2_precision": round(rouge2[i][0], 4), "rouge2_story": rouge2[i][1],
                        **verdicts[strongest], "source": int(neighbours[i][strongest])})
    novelty = novelty_bleu(generations, train_stories)
    for record, score in zip(records, novelty):
        record["novelty_bleu"] = round(score, 4)
    counts = {label: sum(r["label"] == label for r in records) for label in LABELS}
    mean = lambda key: round(sum(r[key] for r in records) / len(records), 4)  # noqa: E731
    headline = {**novelty_figures(mean("novelty_bleu")), "nearest_cosine_mean": mean("cosine"),
                # population SD, as the completion protocol's: the from-scratch study gives mean (SD)
                "nearest_cosine_sd": round(float(np.std([r["cosine"] for r in records])), 4),
                "nearest_cosine_max": max(r["cosine"] for r in records),
                "rouge2_precision_max_mean": mean("rouge2_precision"),
                "exact_copy_share": round(counts["exact copy"] / len(records), 4),
                "template_match_share": round(counts["template match"] / len(records), 4)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    score_histogram({"": [r["cosine"] for r in records]}, out_dir / "memorization_cosine.png",
                    "TF-IDF cosine to the nearest training story", "generated stories",
                    f"Nearest of {len(train_stories):,} training stories")
    ranked = sorted(range(len(records)), key=lambda i: -records[i]["cosine"])[:top]
    top_pairs = [{"generation": generations[i], "training_story": train_stories[records[i]["nearest"]],
                  **records[i]} for i in ranked]
    section = {"headline": headline, "generations": len(generations), "training_stories": len(train_stories),
               "classification": counts, "records": records, "top_pairs": top_pairs,
               "novelty_sample": NOVELTY_SAMPLE, "novelty_seed": NOVELTY_SEED, "candidates": CANDIDATES,
               "rouge_search": rouge_search,
               "charts": ["memorization_cosine.png"]}
    section["markdown"] = render_markdown(section)
    return section


def render_markdown(section: dict) -> str:
    """Headline figures, the classification counts, the method in brief and the closest pairs side by side."""
    h, counts = section["headline"], section["classification"]
    lines = [f"{section['generations']} generated stories against {section['training_stories']:,} training "
             "stories.", "",
             "| novelty | novelty BLEU | nearest cosine (mean) | nearest cosine (max) | max ROUGE-2 precision (mean) | "
             "exact copies | template matches | originals |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {h['novelty']:.4f} | {h['novelty_bleu']:.4f} | {h['nearest_cosine_mean']:.4f} | "
             f"{h['nearest_cosine_max']:.4f} | "
             f"{h['rouge2_precision_max_mean']:.4f} | {counts['exact copy']} | {counts['template match']} | "
             f"{counts['original']} |", "",
             "- Nearest story: TF-IDF cosine (words of 2+ letters, English stop words removed; 1 = same words).",
             "- Max ROUGE-2 precision: share of a generation's bigrams found in one training story (rouge-score's "
             "tokens, no stemming), " + (f"over all {section['training_stories']:,} training stories (exact)."
                                         if section["rouge_search"] == "all" else
                                         f"over the {section['candidates']} TF-IDF nearest stories (not the whole "
                                         "set)."),
             f"- Copies: word {NGRAM}-grams of the generation found in a candidate story; exact copy at >= "
             f"{COPY_THRESHOLD:.0%} with the same names, template match at >= {COPY_THRESHOLD:.0%} once names "
             "(capitalised mid-sentence, or common TinyStories names) are masked.",
             "- Novelty BLEU: mean sentence BLEU in [0, 1] (sacrebleu 13a, exp smoothing) against "
             f"{section['novelty_sample']} training stories drawn with seed {section['novelty_seed']}; lower is "
             "more novel. Novelty: 1 - novelty BLEU; higher is more novel.", "",
             "![nearest training story cosine](memorization_cosine.png)", "",
             "| generation | nearest training story | cosine | ROUGE-2 P (story) | label |", "|---|---|---:|---:|---|"]
    for pair in section["top_pairs"]:
        lines.append(f"| {cell(pair['generation'], 600)} | {cell(pair['training_story'], 600)} | "
                     f"{pair['cosine']:.4f} | {pair['rouge2_precision']:.4f} (#{pair['rouge2_story']}) | "
                     f"{pair['label']} |")
    return "\n".join(lines) + "\n"
