"""An LLM judge: any OpenAI-compatible chat endpoint grades each story 1-10 per rubric category.

The judge sees the rubric, a few anchored examples (stories with the scores they deserve) and the story, and must
answer with one JSON object holding an integer 1-10 for every category and nothing else (surrounding whitespace and
a ```json fence are tolerated). Anything else is an invalid reply: the request is sent again, up to `retries` more
times, and then the section fails with one line naming the endpoint. Several samples per story are averaged.

Statistics: for each category, the mean over stories of each story's mean score, with a 95 % Student-t interval
over those per-story means (n - 1 degrees of freedom); with a single story, over its samples instead. Given human
ratings of some stories, the judge grades those too, and the report gives Spearman's rank correlation (ties take
average ranks) between the judge's per-story mean and the human score, per category.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml
from tqdm import tqdm

from talelab.config import JudgeConfig
from talelab.data.sources import json_lines
from talelab.errors import ConfigError, InputError
from talelab.evaluate.render import cell
from talelab.paths import resolve_input
from talelab.plots import grouped_bar_chart

DEFAULT_RUBRIC = Path(__file__).parent / "judge_rubric.yaml"
DEFAULT_ANCHORS = Path(__file__).parent / "judge_anchors.yaml"
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class JudgeError(InputError):
    """The judge endpoint is unreachable, refuses the request, or kept answering something other than scores."""


def read_structured(path: Path) -> object:
    """A YAML or JSON file (JSON is YAML) as data; a one-line error when it does not parse."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML/JSON "
                          f"({getattr(e, 'problem', e)})") from None


def load_rubric(path: str = "") -> dict[str, str]:
    """Category name -> what the judge should look at, from `categories:` (a mapping, or a list of names)."""
    where = resolve_input(path) if path else DEFAULT_RUBRIC
    data = read_structured(where)
    categories = data.get("categories") if isinstance(data, dict) else None
    if isinstance(categories, list):
        categories = {name: "" for name in categories}
    if not isinstance(categories, dict) or not categories:
        raise ConfigError(f"{where}: the rubric has no categories (expected 'categories': {{name: description}})")
    for name in categories:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ConfigError(f"{where}: category name {name!r} must be a word (letters, digits, _)")
    return {name: str(description or "") for name, description in categories.items()}


def check_scores(scores: object, categories: dict[str, str], where: str) -> dict:
    """The scores if they give every category (and no other) a value in 1..10; else ValueError saying what is off."""
    if not isinstance(scores, dict):
        raise ValueError(f"{where}: expected a JSON object of scores, got {type(scores).__name__}")
    missing, extra = [c for c in categories if c not in scores], [k for k in scores if k not in categories]
    if missing or extra:
        raise ValueError(f"{where}: " + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                               extra and f"unknown {', '.join(map(str, extra))}"])))
    for name, value in scores.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10:
            raise ValueError(f"{where}: {name} must be an integer from 1 to 10, not {value!r}")
    return {name: scores[name] for name in categories}


def load_anchors(path: str, categories: dict[str, str]) -> list[dict]:
    """The few-shot examples: [{story, scores}], each scoring exactly the rubric's categories; 'none' for none."""
    if path == "none":
        return []
    where = resolve_input(path) if path else DEFAULT_ANCHORS
    data = read_structured(where)
    anchors = data.get("anchors") if isinstance(data, dict) else data
    if not isinstance(anchors, list):
        raise ConfigError(f"{where}: expected a list 'anchors' of {{story, scores}}")
    for i, anchor in enumerate(anchors):
        if not isinstance(anchor, dict) or not isinstance(anchor.get("story"), str):
            raise ConfigError(f"{where}: anchor {i}: expected {{story: text, scores: {{category: 1-10}}}}")
        try:
            check_scores(anchor.get("scores"), categories, f"{where}: anchor {i}")
        except ValueError as e:
            hint = " (a rubric of your own needs anchors of your own, or --anchors none)" if not path else ""
            raise ConfigError(f"{e}{hint}") from None
    return anchors


def judge_messages(story: str, categories: dict[str, str], anchors: list[dict]) -> list[dict]:
    """System rubric, then each anchor as a user story and the assistant's scores, then the story to grade."""
    rubric = "\n".join(f"- {name}: {description}".rstrip(": ") for name, description in categories.items())
    shape = ", ".join(f'"{name}": <integer 1-10>' for name in categories)
    system = ("You grade short stories written for young children by a small language model. Score each category "
              f"from 1 (very poor) to 10 (excellent):\n{rubric}\n"
              f"Reply with only this JSON object and nothing else: {{{shape}}}")
    messages = [{"role": "system", "content": system}]
    for anchor in anchors:
        messages += [{"role": "user", "content": f"Story:\n{anchor['story'].strip()}"},
                     {"role": "assistant", "content": json.dumps(anchor["scores"])}]
    return messages + [{"role": "user", "content": f"Story:\n{story.strip()}"}]


def parse_reply(text: str | None, categories: dict[str, str]) -> dict[str, int]:
    """The scores in a judge's reply, or ValueError saying why the reply is not acceptable."""
    text = (text or "").strip()
    fenced = _FENCE.match(text)
    try:
        scores = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        raise ValueError(f"not JSON: {text[:80]!r}") from None
    return check_scores(scores, categories, "reply")


def reply_text(reply) -> str | None:
    """The message text of a chat completion; ValueError for a body of another shape (a misconfigured proxy)."""
    try:
        return reply.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        raise ValueError(f"not a chat completion: {str(reply)[:80]!r}") from None


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def grader(config: JudgeConfig, categories: dict[str, str], anchors: list[dict], stop: threading.Event):
    """grade(story) -> (scores, invalid replies before them), retrying junk and transient failures."""
    # deferred: the OpenAI client loads only when a judge grades
    import openai

    key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    client = openai.OpenAI(base_url=config.base_url, api_key=key or "unused", timeout=config.timeout,
                           max_retries=0)  # retries are ours, so that junk replies and failures count alike
    endpoint = f"judge endpoint {config.base_url} (model {config.model})"
    extra = {"response_format": {"type": "json_object"}} if config.json_mode else {}

    def grade(story: str) -> tuple[dict[str, int], int]:
        problem = ""
        for attempt in range(config.retries + 1):
            if stop.is_set():
                raise JudgeError(f"{endpoint}: stopped after another story failed")
            try:
                reply = client.chat.completions.create(
                    model=config.model, messages=judge_messages(story, categories, anchors),
                    temperature=config.temperature, max_tokens=config.max_tokens, **extra)
                return parse_reply(reply_text(reply), categories), attempt
            except ValueError as e:  # junk: ask again at once
                problem = f"invalid reply ({one_line(e)})"
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
                problem = f"{type(e).__name__}: {one_line(e)}"
                time.sleep(min(8.0, 0.5 * 2 ** attempt))  # down, busy or failing: give it a moment
            except openai.APIStatusError as e:  # 400, 401, 404...: asking again gets the same answer
                hint = f" (is ${config.api_key_env} set?)" if e.status_code in (401, 403) else ""
                detail = e.body.get("message") if isinstance(e.body, dict) else None  # OpenAI's error shape
                raise JudgeError(f"{endpoint}: HTTP {e.status_code}: {one_line(detail or e.message)}{hint}") from None
        raise JudgeError(f"{endpoint}: no valid scores after {config.retries + 1} attempts; last: {problem}")

    return grade


def grade_all(stories: list[str], config: JudgeConfig, categories: dict[str, str], anchors: list[dict],
              progress: bool, desc: str) -> tuple[list[list[dict]], int]:
    """Each story's `config.samples` score dicts, and how many invalid replies were retried."""
    stop = threading.Event()
    grade = grader(config, categories, anchors, stop)
    samples: list[list[dict]] = [[] for _ in stories]
    invalid = 0
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        futures = {pool.submit(grade, story): i for i, story in enumerate(stories) for _ in range(config.samples)}
        with tqdm(total=len(futures), desc=desc, unit="reply", disable=not progress) as bar:
            try:
                for future in as_completed(futures):
                    scores, retried = future.result()
                    samples[futures[future]].append(scores)
                    invalid += retried
                    bar.update()
            except BaseException:
                stop.set()  # the first failure ends the section: waiting requests are dropped
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return samples, invalid


def t_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """Mean and the two ends of its 95 % Student-t interval (None with fewer than two values)."""
    # deferred: scipy.stats takes over a second to import, and only the judge's statistics use it
    from scipy import stats

    n, mean = len(values), sum(values) / len(values)
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def category_statistics(samples: list[list[dict]], categories: dict[str, str]) -> dict:
    """Per category: mean, 95 % t-interval and n, over per-story means (over samples when there is one story)."""
    result = {}
    for name in categories:
        per_story = [sum(s[name] for s in story) / len(story) for story in samples]
        values = per_story if len(per_story) > 1 else [s[name] for s in samples[0]]
        mean, low, high = t_interval(values)
        result[name] = {"mean": mean, "ci95": None if low is None else [low, high], "n": len(values)}
    return result


def read_human_ratings(path: str, categories: dict[str, str]) -> list[tuple[str, dict[str, float]]]:
    """(story, {category: score}) from JSONL {"story", "scores"} or CSV (a `story` column, one column per category;
    empty cells are unrated); a one-line error naming the file and line."""
    where = resolve_input(path)
    rows = []
    if where.suffix.lower() == ".csv":
        with open(where, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "story" not in (reader.fieldnames or []):
                raise InputError(f"{where}:1: a ratings CSV needs a 'story' column")
            for record in reader:
                scores = {k: v for k, v in record.items() if k != "story" and v not in (None, "")}
                try:
                    scores = {k: float(v) for k, v in scores.items()}
                except ValueError:
                    raise InputError(f"{where}:{reader.line_num}: scores must be numbers") from None
                rows.append((f"{where}:{reader.line_num}", record["story"], scores))
    else:
        for number, record in json_lines(where, where.read_text(encoding="utf-8")):
            if not isinstance(record, dict) or not isinstance(record.get("scores"), dict):
                raise InputError(f"{where}:{number}: expected {{\"story\": text, \"scores\": {{category: score}}}}")
            rows.append((f"{where}:{number}", record.get("story"), record["scores"]))
    ratings = []
    for line, story, scores in rows:
        if not isinstance(story, str) or not story.strip():
            raise InputError(f"{line}: no story text")
        for name, value in scores.items():  # any numeric scale will do: Spearman compares ranks only
            if name not in categories:
                raise InputError(f"{line}: category '{name}' is not in the rubric ({', '.join(categories)})")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                raise InputError(f"{line}: {name} must be a number, not {value!r}")
        ratings.append((story, scores))
    if not ratings:
        raise InputError(f"{where}: no ratings")
    return ratings


def spearman(judge: list[float], human: list[float]) -> float | None:
    """Spearman's rho (average ranks for ties); None when undefined (fewer than 3 pairs, or a constant side)."""
    # deferred: scipy.stats takes over a second to import, and only the judge's statistics use it
    from scipy import stats

    if len(judge) < 3:
        return None
    rho = stats.spearmanr(judge, human).statistic
    return None if math.isnan(rho) else float(rho)


def judge_section(stories: list[str], config: JudgeConfig, out_dir: Path, progress: bool = True) -> dict:
    """Grades, mean +- 95 % CI per category (judge.png), and the agreement with human ratings when given."""
    if not stories:
        raise InputError("judge: no stories to grade")
    if config.samples < 1 or config.retries < 0:
        raise ConfigError(f"judge: samples={config.samples} must be 1 or more and retries={config.retries} 0 or more")
    categories = load_rubric(config.rubric)
    anchors = load_anchors(config.anchors, categories)
    human = read_human_ratings(config.human_ratings, categories) if config.human_ratings else []
    samples, invalid = grade_all(stories, config, categories, anchors, progress, "judge")
    statistics = category_statistics(samples, categories)
    agreement = None
    if human:
        human_samples, human_invalid = grade_all([s for s, _ in human], config, categories, anchors, progress,
                                                 "judge (human-rated)")
        invalid += human_invalid
        judged = [{c: sum(s[c] for s in story) / len(story) for c in categories} for story in human_samples]
        agreement = {}
        for name in categories:
            pairs = [(j[name], h[name]) for j, (_, h) in zip(judged, human) if name in h]
            agreement[name] = {"spearman": spearman([j for j, _ in pairs], [h for _, h in pairs]), "n": len(pairs)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(categories)
    grouped_bar_chart(names, {"judge": [statistics[c]["mean"] for c in names]}, out_dir / "judge.png",
                      "mean score (1-10)", f"LLM judge {config.model}: mean and 95 % t-interval", ylim=(0, 10),
                      errors={"judge": [tuple(statistics[c]["ci95"] or (statistics[c]["mean"],) * 2) for c in names]})
    result = {"endpoint": config.base_url, "model": config.model, "samples_per_story": config.samples,
              "stories_graded": len(stories), "invalid_replies_retried": invalid,
              "interval": ("95 % Student-t over per-story means" if len(stories) > 1 else
                           "95 % Student-t over the samples of the one story"),
              "categories": statistics, "human_agreement": agreement, "charts": ["judge.png"],
              "stories": [{"story": story, "samples": s} for story, s in zip(stories, samples)]}
    result["markdown"] = judge_markdown(result, len(human))
    return result


def judge_markdown(result: dict, human_count: int) -> str:
    lines = ["## LLM judge", "",
             f"`{result['model']}` at {result['endpoint']} graded {result['stories_graded']} stories, "
             f"{result['samples_per_story']} samples each, 1-10 per category, with anchored examples; "
             f"{result['invalid_replies_retried']} invalid replies were retried. Interval: {result['interval']}.", "",
             "| category | mean | 95 % CI | n |", "|---|---|---|---|"]
    for name, row in result["categories"].items():
        ci = "-" if row["ci95"] is None else f"[{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}]"
        lines.append(f"| {name} | {row['mean']:.2f} | {ci} | {row['n']} |")
    lines += ["", "![judge](judge.png)"]
    if result["human_agreement"] is not None:
        lines += ["", f"Agreement with human ratings ({human_count} stories graded by the judge too): Spearman's "
                  f"rank correlation of the judge's per-story mean with the human score.", "",
                  "| category | Spearman rho | stories |", "|---|---|---|"]
        for name, row in result["human_agreement"].items():
            rho = "n/a (fewer than 3, or constant)" if row["spearman"] is None else f"{row['spearman']:.3f}"
            lines.append(f"| {name} | {rho} | {row['n']} |")
    first = result["stories"][0]
    lines += ["", f"Example: {cell(first['story'], 200)} → {json.dumps(first['samples'][0])}"]
    return "\n".join(lines) + "\n"
