"""How report sections write: text safe for a markdown table cell (their charts are drawn in talelab.plots)."""

from __future__ import annotations


def cell(text: str, limit: int = 0) -> str:
    """Text made safe for one markdown table cell (pipes escaped, line breaks shown as ⏎), cut to `limit`."""
    text = " ".join(text.replace("|", "\\|").replace("\n", " ⏎ ").split())
    return text if not limit or len(text) <= limit else text[:limit - 1] + "…"
