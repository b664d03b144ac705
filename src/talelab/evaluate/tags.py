"""Tag adherence: when asked for a TinyStories feature, does the model write a story that has it?

`train_tag_classifier` (`talelab tags train`) fits a multi-label classifier on stories labelled in the TinyStories
all_data format: TF-IDF over words and word pairs (quote marks and ! ? kept as tokens, since speech shows in them)
and one logistic regression per feature (one-vs-rest), scored by precision / recall / F1 on held-out labels.

It is saved as plain JSON (vocabulary, idf, weights), not pickle / joblib: loading a pickle runs whatever code the
file names, so a classifier shared by someone else could take over the machine; JSON weights are only numbers, and
they stay readable by any tool without matching scikit-learn versions.

`tags_section` asks the model for stories with each feature and without any (the baseline) and reports the share
that shows each feature: by rule for Dialogue and MoralValue (talelab.data.tags), by the classifier for the others
when one is given, and "not measured" otherwise.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from talelab.atomic import write_text_atomic
from talelab.config import SamplingConfig, TagClassifierConfig
from talelab.data.tags import FEATURES, RULE_FEATURES, RULES, check_features, labels_of, story_prompt, story_rows
from talelab.errors import ConfigError, InputError
from talelab.evaluate.completion import Complete
from talelab.evaluate.render import cell
from talelab.paths import resolve_input
from talelab.plots import grouped_bar_chart

CLASSIFIER_FILE = "classifier.json"
CLASSIFIER_FORMAT = "talelab-tag-classifier/1"
TOKEN_PATTERN = r"(?u)\b\w\w+\b|[\"“”!?]"  # words of 2+ letters, and the marks that betray speech
BEGINNING = "Once upon a time"
TAGS_SAMPLING = SamplingConfig(temperature=0.8, max_new_tokens=200, seed=0)


def read_labelled(path: str | Path, data_root=None, limit: int = 0) -> tuple[list[str], list[list[str]]]:
    """Stories and their features, streamed from labelled records: a prepared directory (its train.jsonl) or split
    of TinyStories all_data ({"text", "instruction": {"features": [...]}, ...}), or all_data files themselves (a JSON
    array or JSONL of {"story", "instruction": ...}, or a folder of them such as data00.json ... data49.json); at
    most `limit` (0: all); a one-line error naming the file and line or record."""
    path = resolve_input(path, data_root)
    if (path / "train.jsonl").is_file():
        path = path / "train.jsonl"
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in (".json", ".jsonl"))
        if not files:
            raise InputError(f"{path}: a folder without .json or .jsonl files")
        stories, labels = [], []
        for file in files:
            more = read_labelled(file, limit=limit - len(stories) if limit else 0)
            stories, labels = stories + more[0], labels + more[1]
            if limit and len(stories) >= limit:
                break
        return stories, labels
    stories, labels = [], []
    rows = story_rows(path)
    for number, record in enumerate(itertools.islice(rows, limit) if limit else rows, start=1):
        where = f"{path}: record {number}"
        features = labels_of(record, where)[0]
        if features is None:
            raise InputError(f"{where}: no \"instruction\": {{\"features\": [...]}} list (the labels)")
        try:
            labels.append(check_features(features, where))
        except ConfigError as e:  # an unknown label is a fault of the file, not of the configuration
            raise InputError(str(e)) from None
        stories.append(record["text"])
    return stories, labels


def vectorizer(config: TagClassifierConfig, vocabulary: dict | None = None):
    # deferred: scikit-learn takes about 2 s to import, and only this section uses it
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=(1, config.ngram_max), min_df=config.min_df,
                           max_features=config.max_features or None, sublinear_tf=True, vocabulary=vocabulary)


def scores_of(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Precision, recall and F1 of one feature; None where undefined (no predicted or no true positives)."""
    # deferred: scikit-learn takes about 2 s to import, and only this section uses it
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=np.nan)
    return {name: None if math.isnan(v) else round(float(v), 4) for name, v in
            (("precision", p), ("recall", r), ("f1", f))}


def train_tag_classifier(config: TagClassifierConfig, data_root=None) -> dict:
    """Fit, score on held-out labels, and write classifier.json, report.md, report.json and f1.png to config.out."""
    # deferred: scikit-learn takes about 2 s to import, and only this section uses it
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.multiclass import OneVsRestClassifier

    if not config.data:
        raise ConfigError("tags train: --data is required (a prepared directory of TinyStories all_data, or its "
                          "JSON or JSONL files)")
    if not 0 < config.test_fraction < 1:
        raise ConfigError(f"test_fraction={config.test_fraction}: must be between 0 and 1")
    stories, labels = read_labelled(config.data, data_root, config.max_stories)
    if len(stories) < 10:
        raise InputError(f"{config.data}: {len(stories)} records; at least 10 are needed to train and hold some out")
    y = np.array([[name in row for name in FEATURES] for row in labels], dtype=int)
    train_x, test_x, train_y, test_y = train_test_split(stories, y, test_size=config.test_fraction,
                                                        random_state=config.seed)
    # a feature needs both classes among the training stories; one seen too rarely is reported, not guessed
    trainable = [j for j in range(len(FEATURES)) if 2 <= train_y[:, j].sum() < len(train_y)]
    if not trainable:
        raise InputError(f"{config.data}: no feature has both labelled and unlabelled stories to learn from")
    tfidf = vectorizer(config)
    model = OneVsRestClassifier(LogisticRegression(C=config.c, class_weight="balanced", max_iter=2000))
    model.fit(tfidf.fit_transform(train_x), train_y[:, trainable])
    names = [FEATURES[j] for j in trainable]
    classifier = {"format": CLASSIFIER_FORMAT, "features": names, "threshold": config.threshold,
                  "vectorizer": {"ngram_max": config.ngram_max, "token_pattern": TOKEN_PATTERN,
                                 "vocabulary": {t: int(i) for t, i in tfidf.vocabulary_.items()},
                                 "idf": [round(float(v), 6) for v in tfidf.idf_]},
                  "weights": {name: {"coef": [round(float(v), 6) for v in est.coef_[0]],
                                     "intercept": float(est.intercept_[0])}
                              for name, est in zip(names, model.estimators_)}}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CLASSIFIER_FILE, json.dumps(classifier))
    predicted = predict_features(classifier, test_x)  # the saved weights, exactly as users will load them
    features = {}
    for j, name in enumerate(FEATURES):
        row = {"train_positives": int(train_y[:, j].sum()), "test_positives": int(test_y[:, j].sum()),
               "classifier": None, "rule": None}
        if name in predicted:
            row["classifier"] = scores_of(test_y[:, j], np.array(predicted[name], dtype=int))
        if name in RULES:
            row["rule"] = scores_of(test_y[:, j], np.array([RULES[name](s) for s in test_x], dtype=int))
        features[name] = row
    report = {"data": str(config.data), "train_stories": len(train_x), "test_stories": len(test_x),
              "config": vars(config), "features": features, "charts": ["f1.png"]}
    f1 = {"classifier": [(r["classifier"] or {}).get("f1") for r in features.values()],
          "rule": [(r["rule"] or {}).get("f1") for r in features.values()]}
    grouped_bar_chart(list(FEATURES), f1, out / "f1.png", "F1 on held-out labels", "Tag classifier vs rules",
                      ylim=(0, 1), notes=["" if r["classifier"] else "not trained" for r in features.values()])
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    write_text_atomic(out / "report.md", classifier_markdown(report))
    return report


def classifier_markdown(report: dict) -> str:
    def triple(scores: dict | None) -> str:
        if scores is None:
            return "-"
        return " / ".join("n/a" if scores[k] is None else f"{scores[k]:.2f}" for k in ("precision", "recall", "f1"))

    lines = ["# Tag classifier", "",
             f"TF-IDF (words and word pairs, quote marks kept) + one-vs-rest logistic regression, trained on "
             f"{report['train_stories']} stories of `{report['data']}` and scored on {report['test_stories']} "
             f"held-out ones. Precision / recall / F1 against the held-out labels; n/a where undefined (nothing "
             f"predicted or no labelled story). Features with fewer than 2 labelled training stories are not trained.",
             "", "| feature | train positives | held-out positives | classifier P / R / F1 | rule P / R / F1 |",
             "|---|---|---|---|---|"]
    for name, row in report["features"].items():
        model = triple(row["classifier"]) if row["classifier"] else "not trained"
        lines.append(f"| {name} | {row['train_positives']} | {row['test_positives']} | {model} | "
                     f"{triple(row['rule'])} |")
    return "\n".join(lines + ["", "![F1 per feature](f1.png)", ""])


def load_tag_classifier(path: str | Path, data_root=None) -> dict:
    """A classifier written by `talelab tags train` (its directory or classifier.json)."""
    path = resolve_input(path, data_root)
    if path.is_dir():
        path = path / CLASSIFIER_FILE
    try:
        classifier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a tag classifier ({e})") from None
    if not isinstance(classifier, dict) or classifier.get("format") != CLASSIFIER_FORMAT:
        raise InputError(f"{path}: not a tag classifier (expected format {CLASSIFIER_FORMAT}, from `talelab tags "
                         f"train`)")
    return classifier


def predict_features(classifier: dict, stories: list[str]) -> dict[str, list[bool]]:
    """For each feature the classifier knows, whether each story shows it (probability >= its threshold)."""
    settings = classifier["vectorizer"]
    config = TagClassifierConfig(ngram_max=settings["ngram_max"], min_df=1)
    tfidf = vectorizer(config, vocabulary=settings["vocabulary"])
    tfidf.idf_ = np.array(settings["idf"])
    x = tfidf.transform(stories)
    names = classifier["features"]
    coef = np.array([classifier["weights"][name]["coef"] for name in names])  # (features, vocabulary)
    intercept = np.array([classifier["weights"][name]["intercept"] for name in names])
    probability = 1 / (1 + np.exp(-(x @ coef.T + intercept)))  # (stories, features), as predict_proba computes it
    return {name: (probability[:, j] >= classifier["threshold"]).tolist() for j, name in enumerate(names)}


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion (sound for small n and for 0 or n successes)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))


def tags_section(complete: Complete, out_dir: Path, stories_per_feature: int = 10, classifier: str | None = None,
                 progress: bool = True, config: SamplingConfig | None = None) -> dict:
    """Share of stories showing each feature when it is requested vs when nothing is (the baseline); tags.png."""
    if stories_per_feature < 1:
        raise ConfigError(f"stories_per_feature={stories_per_feature}: must be 1 or more")
    model = load_tag_classifier(classifier) if classifier else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = {"baseline": []} | {name: [name] for name in FEATURES}
    stories = {}
    for group, requested in tqdm(groups.items(), desc="tags", unit="feature", disable=not progress):
        prompt = story_prompt(requested, beginning=BEGINNING)
        continuations = complete([prompt] * stories_per_feature, config or TAGS_SAMPLING)
        stories[group] = [BEGINNING + text for text in continuations]
    predicted = {group: predict_features(model, texts) for group, texts in stories.items()} if model else {}
    features, n = {}, stories_per_feature
    for name in FEATURES:
        if name in RULE_FEATURES:
            method, shown = "rule", {g: [RULES[name](s) for s in texts] for g, texts in stories.items()}
        elif model and name in model["features"]:
            method, shown = "classifier", {g: predicted[g][name] for g in stories}
        else:
            features[name] = {"method": None, "note": "no classifier: not measured" if not model else
                              "the classifier was not trained on this feature: not measured"}
            continue
        hits = {"requested": sum(shown[name]), "baseline": sum(shown["baseline"])}
        features[name] = {"method": method, **{k: v / n for k, v in hits.items()},
                          **{f"{k}_ci95": wilson(v, n) for k, v in hits.items()}}
    labels = list(FEATURES)
    values = {k: [features[f].get(k) for f in labels] for k in ("requested", "baseline")}
    grouped_bar_chart(labels, values, out_dir / "tags.png", "share of stories with the feature",
                      f"Tag adherence ({n} stories each; bars: Wilson 95 % interval)", ylim=(0, 1),
                      errors={k: [features[f].get(f"{k}_ci95", (0, 0)) for f in labels] for k in values},
                      notes=["" if features[f]["method"] else "not measured" for f in labels])
    return {"markdown": tags_markdown(features, stories, n), "charts": ["tags.png"], "features": features,
            "stories_per_feature": n, "classifier": str(classifier) if classifier else None, "stories": stories}


def tags_markdown(features: dict, stories: dict, n: int) -> str:
    lines = ["## Tag adherence", "",
             f"{n} stories per feature, each prompted as `Features: <feature>` + newline + `Story: {BEGINNING}` "
             f"(TinyStories Instruct form), and {n} prompted with `{BEGINNING}` alone (baseline). Share of stories "
             f"showing the feature, with Wilson 95 % intervals; detected by rule (Dialogue: quoted speech, "
             f"MoralValue: a stated lesson) or by the trained tag classifier. Models not tuned on the Instruct form "
             f"should show no lift over the baseline.", "",
             "| feature | detected by | requested | baseline | lift |", "|---|---|---|---|---|"]
    for name, row in features.items():
        if row["method"] is None:
            lines.append(f"| {name} | - | {row['note']} | | |")
            continue
        low, high = row["requested_ci95"]
        blow, bhigh = row["baseline_ci95"]
        lines.append(f"| {name} | {row['method']} | {row['requested']:.2f} [{low:.2f}, {high:.2f}] | "
                     f"{row['baseline']:.2f} [{blow:.2f}, {bhigh:.2f}] | {row['requested'] - row['baseline']:+.2f} |")
    lines += ["", "![tag adherence](tags.png)", "", "Examples (the first story of each request):", ""]
    lines += [f"- **{group}**: {cell(texts[0], 300)}" for group, texts in stories.items()]
    return "\n".join(lines) + "\n"
