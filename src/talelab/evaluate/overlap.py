"""Text-overlap metrics: ROUGE, smoothed sentence BLEU, Self-BLEU, distinct-n and similarity across generations.

Each metric fixes its own word tokenizer, so a model's tokenizer never changes a score:
- ROUGE-1/2/L (`rouge-score`): its default tokenizer, lowercased runs of letters and digits (everything else is a
  separator), no stemming. Scores are F1 unless a name says precision or recall.
- BLEU and Self-BLEU (`sacrebleu`): its standard `13a` tokenizer (mteval-v13a: punctuation split off, case kept),
  n-gram orders 1 to 4 combined geometrically, `exp` smoothing (Chen & Cherry 2014, method 3) with effective order,
  as sacrebleu's sentence BLEU does; reported in [0, 1] rather than sacrebleu's [0, 100].
- distinct-n: lowercased words (runs of letters, digits and apostrophes; punctuation ignored); n-grams never cross
  from one text into the next.
- TF-IDF cosine of pairs (scikit-learn's TfidfVectorizer with its defaults: lowercased words of 2+ letters or digits,
  no stop words removed, smoothed idf, rows L2-normalised), fitted on the texts of the pairs compared.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from sacrebleu.metrics import BLEU
from sacrebleu.metrics.helpers import extract_all_word_ngrams

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TOKENIZERS_NOTE = ("ROUGE: rouge-score's default tokenizer (lowercased letters and digits, no stemming); BLEU and "
                   "Self-BLEU: sacrebleu's 13a tokenizer (case kept, punctuation split off), orders 1-4, exp "
                   "smoothing; distinct-n: lowercased words (letters, digits, apostrophes); TF-IDF cosine: "
                   "scikit-learn's default words (2+ letters or digits, lowercased). None depends on the model's "
                   "tokenizer.")
_WORD = re.compile(r"[a-z0-9']+")


@lru_cache(maxsize=None)
def rouge_scorer(types: tuple[str, ...] = ROUGE_TYPES):
    # deferred: rouge-score loads nltk (seconds), which callers of BLEU and distinct-n alone never need
    from rouge_score.rouge_scorer import RougeScorer

    # split_summaries would need nltk's punkt (absent offline); rougeL over the whole text needs no sentences
    return RougeScorer(list(types), use_stemmer=False)


@lru_cache(maxsize=1)
def bleu_metric():
    return BLEU(tokenize="13a", smooth_method="exp", effective_order=True, max_ngram_order=4)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 of `prediction` against `reference`, plus ROUGE-2 precision and recall."""
    scores = rouge_scorer().score(reference, prediction)  # rouge-score takes (target, prediction)
    result = {name: scores[name].fmeasure for name in ROUGE_TYPES}
    result["rouge2_precision"], result["rouge2_recall"] = scores["rouge2"].precision, scores["rouge2"].recall
    return result


def tfidf_cosines(predictions: list[str], references: list[str]) -> list[float]:
    """The TF-IDF cosine similarity of each prediction with its reference (0 where either has no word).

    The vectorizer (scikit-learn's TfidfVectorizer, default settings) is fitted on these predictions and references
    together, so the idf weights are those of the texts compared in this call and nothing else.
    """
    # deferred: scikit-learn takes about 2 s to import, and only this figure and memorization use it
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    vectorizer = TfidfVectorizer()
    analyze = vectorizer.build_analyzer()
    if not any(analyze(text) for text in predictions + references):  # no word anywhere: no vocabulary to fit
        return [0.0] * len(predictions)
    vectors = vectorizer.fit_transform(predictions + references)
    n = len(predictions)
    # pair by pair: the whole n x n matrix of cosine_similarity would be quadratic in memory for its diagonal
    return [float(cosine_similarity(vectors[i], vectors[n + i])[0, 0]) for i in range(n)]


def bleu(hypothesis: str, references: list[str]) -> float:
    """Smoothed sentence BLEU (orders 1-4) of `hypothesis` against several references, in [0, 1]."""
    return bleu_metric().sentence_score(hypothesis, references).score / 100


def self_bleu(texts: list[str]) -> float:
    """Mean BLEU of each text against all the others (Zhu et al. 2018): 1 when all are identical, 0 when disjoint.

    Equal to averaging `bleu(text, others)`, but each text is tokenized and counted once: for every n-gram the two
    largest counts (and whose they are) give the best count among the *other* texts, so n texts cost O(n) n-gram
    counts instead of O(n^2).
    """
    if len(texts) < 2:
        return float("nan")
    metric = bleu_metric()
    counted = [extract_all_word_ngrams(metric.tokenizer(t.rstrip()), 1, metric.max_ngram_order) for t in texts]
    top: dict[tuple, list[tuple[int, int]]] = {}  # n-gram -> its two largest (count, text index)
    for i, (grams, _) in enumerate(counted):
        for gram, count in grams.items():
            best = top.setdefault(gram, [])
            best.append((count, i))
            if len(best) > 2:
                best.sort(reverse=True)
                best.pop()
    lengths = [length for _, length in counted]
    total_score = 0.0
    for i, (grams, length) in enumerate(counted):
        correct, total = [0] * metric.max_ngram_order, [0] * metric.max_ngram_order
        for gram, count in grams.items():
            others = max((c for c, owner in top[gram] if owner != i), default=0)
            total[len(gram) - 1] += count
            correct[len(gram) - 1] += min(count, others)
        ref_len = closest_length(length, lengths[:i] + lengths[i + 1:])
        total_score += metric.compute_bleu(correct, total, length, ref_len, smooth_method=metric.smooth_method,
                                           effective_order=True, max_ngram_order=metric.max_ngram_order).score
    return total_score / 100 / len(texts)


def closest_length(length: int, others: list[int]) -> int:
    """sacrebleu's reference length for BLEU's brevity penalty: the closest, the shorter on a tie."""
    return min(others, key=lambda other: (abs(other - length), other))


def words(text: str) -> list[str]:
    """distinct-n's words: lowercased runs of letters, digits and apostrophes."""
    return _WORD.findall(text.lower())


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of the texts (Li et al. 2016); 0 when there are no n-grams."""
    grams = [tuple(w[i:i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def max_rouge2_to_others(texts: list[str]) -> list[float]:
    """For each text, its highest ROUGE-2 F1 against any other text (a seed's "similarity across generations").

    The same figure as rouge-score's ROUGE-2 of every pair, with each text tokenized (by rouge-score's tokenizer)
    and its bigrams counted once rather than once per pair.
    """
    from rouge_score.scoring import fmeasure  # deferred, as in rouge_scorer
    from rouge_score.tokenizers import DefaultTokenizer

    tokenizer = DefaultTokenizer(use_stemmer=False)
    bigrams = [Counter(zip(tokens, tokens[1:])) for tokens in map(tokenizer.tokenize, texts)]
    sizes = [sum(b.values()) for b in bigrams]
    best = [0.0] * len(texts)
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):  # F1 is symmetric: one score serves both texts
            small, large = sorted((bigrams[i], bigrams[j]), key=len)
            overlap = sum(min(count, large[gram]) for gram, count in small.items() if gram in large)
            score = fmeasure(overlap / max(sizes[i], 1), overlap / max(sizes[j], 1))
            best[i], best[j] = max(best[i], score), max(best[j], score)
    return best


def diversity(texts: list[str]) -> dict:
    """Self-BLEU, distinct-1/2/3 and the mean / max of each text's max ROUGE-2 against the others."""
    similar = max_rouge2_to_others(texts)
    return {"texts": len(texts), "self_bleu": self_bleu(texts),
            **{f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)},
            "max_rouge2_to_others_mean": sum(similar) / len(similar) if similar else float("nan"),
            "max_rouge2_to_others_max": max(similar, default=float("nan")),
            "max_rouge2_to_others": similar}
