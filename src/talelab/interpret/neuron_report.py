"""The neuron report of `talelab interpret neurons` as Markdown and as one self-contained HTML page."""

from __future__ import annotations

import html

from talelab.interpret.wordclasses import CLASSES

SELECTIVITY = ("selectivity: the share of a neuron's top tokens in its most over-represented word class minus that "
               "class's share of all tokens read (its base rate); ties go to the neuron with more distinct words. "
               "A token is classed by the whole word it belongs to, with a small offline lexicon and suffix rules "
               "(talelab/interpret/wordclasses.py).")


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, no stray pipes or backticks."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'").replace("\n", "⏎")


def _percent(x: float) -> str:
    return f"{100 * x:.0f} %"


def ranking_markdown(report: dict) -> str:
    """The table of the most class-selective neurons, with how selectivity is measured."""
    lines = ["## Most class-selective neurons", "", SELECTIVITY, "",
             "| rank | layer | neuron | class | share | base rate | selectivity | distinct words | top words |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for i, n in enumerate(report["ranking"], start=1):
        lines.append(f"| {i} | {n['layer']} | {n['neuron']} | {n['top_class']} | {_percent(n['share'])} | "
                     f"{_percent(n['base_rate'])} | {n['selectivity']:+.2f} | {n['distinct_words']} | "
                     f"{_md(', '.join(n['top_tokens']))} |")
    return "\n".join(lines) + "\n"


def neurons_markdown(report: dict) -> str:
    """Base rates, the ranking of the most class-selective neurons, then every neuron's top activations."""
    lines = [f"# MLP neurons of {report['model']}", "",
             f"{report['texts']} texts, {report['tokens']} tokens; the top {report['top']} activations of every neuron "
             f"of layers {', '.join(map(str, report['layers']))}, each with {report['context']['before']} tokens of "
             f"context before and {report['context']['after']} after (the token in **bold**).", "",
             "## Word classes of all tokens read", "", "| " + " | ".join(CLASSES) + " |",
             "|" + "---:|" * len(CLASSES), "| " + " | ".join(_percent(report["base_rates"][c]) for c in CLASSES) + " |",
             "", ranking_markdown(report).rstrip("\n")]
    layer = None
    for n in report["neurons"]:
        if n["layer"] != layer:
            layer = n["layer"]
            lines += ["", f"## Layer {layer}"]
        shares = ", ".join(f"{c} {_percent(s)}" for c, s in n["class_shares"].items() if s > 0)
        lines += ["", f"### Layer {layer} neuron {n['neuron']}", "",
                  f"Top class: {n['top_class'] or '-'} (selectivity {n['selectivity']:+.2f}); {shares}.", "",
                  "| activation | token | word (class) | context |", "|---:|---|---|---|"]
        for e in n["top"]:
            token = e["token"].lstrip()  # Markdown bold cannot start with a space: keep it outside
            lead = e["token"][:len(e["token"]) - len(token)]
            context = f"{_md(e['before'])}{lead}**{_md(token)}**{_md(e['after'])}".strip()
            lines.append(f"| {e['activation']:.3f} | `{_md(e['token'])}` | {_md(e['word'])} ({e['class']}) | "
                         f"{context} |")
    return "\n".join(lines) + "\n"


def neurons_html(report: dict) -> str:
    """The same report as one HTML page: the ranking table, then one collapsible section per neuron."""
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>MLP neurons of {e(report['model'])}</title><style>",
             "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}mark{background:#fd6;font-weight:bold}"
             ".ctx{font-family:monospace;white-space:pre-wrap}summary{cursor:pointer}</style></head><body>",
             f"<h1>MLP neurons of {e(report['model'])}</h1>",
             f"<p>{report['texts']} texts, {report['tokens']} tokens; top {report['top']} activations per neuron.</p>",
             "<h2>Word classes of all tokens read</h2><table><tr>",
             "".join(f"<th>{c}</th>" for c in CLASSES), "</tr><tr>",
             "".join(f"<td>{_percent(report['base_rates'][c])}</td>" for c in CLASSES), "</tr></table>",
             f"<h2>Most class-selective neurons</h2><p>{e(SELECTIVITY)}</p><table><tr><th>rank</th><th>layer</th>"
             "<th>neuron</th><th>class</th><th>share</th><th>base rate</th><th>selectivity</th>"
             "<th>distinct words</th><th>top words</th></tr>"]
    for i, n in enumerate(report["ranking"], start=1):
        parts.append(f"<tr><td>{i}</td><td>{n['layer']}</td><td><a href='#L{n['layer']}N{n['neuron']}'>"
                     f"{n['neuron']}</a></td><td>{n['top_class']}</td><td>{_percent(n['share'])}</td>"
                     f"<td>{_percent(n['base_rate'])}</td><td>{n['selectivity']:+.2f}</td>"
                     f"<td>{n['distinct_words']}</td><td>{e(', '.join(n['top_tokens']))}</td></tr>")
    parts.append("</table>")
    layer = None
    for n in report["neurons"]:
        if n["layer"] != layer:
            layer = n["layer"]
            parts.append(f"<h2>Layer {layer}</h2>")
        words = ", ".join(dict.fromkeys(x["word"] for x in n["top"]))
        parts.append(f"<details id='L{layer}N{n['neuron']}'><summary>neuron {n['neuron']}: "
                     f"{n['top_class'] or '-'} {_percent(n['share'])} (selectivity {n['selectivity']:+.2f}) "
                     f"&mdash; {e(words)}</summary><table><tr><th>activation</th><th>word (class)</th>"
                     "<th>context</th></tr>")
        for x in n["top"]:
            parts.append(f"<tr><td>{x['activation']:.3f}</td><td>{e(x['word'])} ({x['class']})</td><td class='ctx'>"
                         f"{e(x['before'])}<mark>{e(x['token'])}</mark>{e(x['after'])}</td></tr>")
        parts.append("</table></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
