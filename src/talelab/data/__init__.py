"""Data stages: read a corpus (sources), clean it (clean), drop duplicates (dedupe), split and write it (prepare)."""
