"""Serving: an OpenAI-compatible API (`app.py`), request batching (`batching.py`) and the story playground (`static/`).

`serve/` sits on top of the house: it uses `generate.py`, `models/` and `tokenizer/`; nothing imports it.
"""
