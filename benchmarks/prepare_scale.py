"""Data stages at scale: seconds and peak memory of prepare, tokenizer, pretokenize, train and memorization on a corpus
of SIZE bytes (decimal units: 20MB = 20,000,000 bytes, 2GB = 2,000,000,000).

Corpus: `<work>/corpus-<SIZE>.txt`, the first stories of nearest_story.py's synthetic corpus (`synthetic_stories`,
numpy default_rng seed 0), so a smaller corpus is a prefix of a larger one:
- sentence pool: the sentences of train-head.txt's 2,316 complete stories (split_sentences) and of
  train-head-lowercase.txt (blank-line pieces split after . ! ? followed by whitespace): about 119,000 sentences;
- story i takes the sentences of train-head story i mod 2,316 (so lengths follow real stories) and keeps each with
  probability 0.25, else replaces it by a pool sentence drawn uniformly; sentences are joined by spaces.
Stories are written as in TinyStories-train.txt (each followed by a line `<|endoftext|>`), streamed to disk until the
next story would pass SIZE bytes, under a temporary name renamed when complete; a corpus file already there whose size
is within 1 % under SIZE is reused.

Stages, each its own `python -m talelab` subprocess so that each one's memory is measured alone, with the offline
variables set and OMP_NUM_THREADS unset (each stage chooses its threads): prepare (--format eot), tokenizer train
(BPE, 4,096 tokens), pretokenize, train (preset tiny, 100 steps, one evaluation and one checkpoint, at the end) and
eval --suite memorization (16 stories of at most 128 tokens, searched against the whole training split). Stage
outputs go to `<work>/{prepared,tok,model,eval}-<SIZE>` (removed first so every stage runs whole, removed at the end
unless --keep), their stdout and stderr to `<work>/logs/`.

Measured per stage: wall seconds (the process's start and imports included); the peak over polls every 0.1 s of the
PSS summed over the stage's process tree (RSS for a process whose PSS is unreadable) and of its anonymous and
shared-memory part (Pss_Anon + Pss_Shmem of /proc/PID/smaps_rollup: PSS less the pages of memory-mapped files, which
the kernel drops under pressure); ru_maxrss from os.wait4 (the
largest single process; Linux counts in it the RSS of this script, about 20 MB, which therefore builds the corpus in
a process of its own). MB/s is input bytes / seconds, the input being the corpus file for prepare and train.jsonl
+ val.jsonl + test.jsonl for tokenizer and pretokenize. Goals: prepare, tokenizer and pretokenize at least 20 MB/s
each; peak PSS at most 2 GB in every stage; with --compare, at most 1.10x the peak of a 200MB run at 2GB (both
peaks compared).
Table to stdout, the same as JSON in `<work>/results-<SIZE>.json`.

    python benchmarks/prepare_scale.py SIZE [--work runs/bench-scale] [--keep] [--compare OTHER.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
from tqdm import tqdm

from machine import cpu_name  # benchmarks/machine.py: run as a script, this folder is on sys.path

UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
EOT = "<|endoftext|>"
SIZE_SLACK = 0.01  # a finished corpus stops within one story of SIZE; 1 % is far more than the longest story
POLL_S = 0.1
SPLITS = ("train.jsonl", "val.jsonl", "test.jsonl")
GOAL_MB_PER_S = {"prepare": 20, "tokenizer": 20, "pretokenize": 20}
GOAL_PEAK_BYTES = 2 * 10**9
GOAL_PEAK_GROWTH = 1.10
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def parse_size(text: str) -> tuple[str, int]:
    """'20MB' -> ('20MB', 20_000_000)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]B)", text.strip(), flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 20MB, 200MB or 2GB")
    number, unit = match.groups()
    return f"{number}{unit.upper()}", int(float(number) * UNITS[unit.upper()])


def write_corpus(path: Path, size: int) -> None:
    """Build the corpus file unless a finished one is there, in a fresh process (see stream_stories)."""
    if path.is_file() and size * (1 - SIZE_SLACK) <= path.stat().st_size <= size:
        print(f"corpus: reusing {path} ({path.stat().st_size:,} bytes)")
        return
    builder = multiprocessing.get_context("spawn").Process(target=stream_stories, args=(path, size))
    builder.start()
    builder.join()
    if builder.exitcode:
        sys.exit(f"building {path} failed with exit code {builder.exitcode}")


def stream_stories(path: Path, size: int) -> None:
    """Stream synthetic stories to `path` until the next would pass `size` bytes."""
    # Imported here, in the builder process: nearest_story imports torch, and Linux carries a parent's memory
    # high-water mark into the ru_maxrss of every process it starts, so this script itself must stay small.
    from nearest_story import synthetic_stories

    partial = path.with_name(path.name + ".partial")  # renamed only when complete: a kill never leaves a short corpus
    written = 0
    with open(partial, "wb", buffering=1 << 20) as out, \
            tqdm(total=size, unit="B", unit_scale=True, desc=f"corpus {path.name}") as bar:
        for story in synthetic_stories(seed=0):
            record = f"{story}\n{EOT}\n".encode("utf-8")
            if written + len(record) > size:
                break
            out.write(record)
            written += len(record)
            bar.update(len(record))
    partial.replace(path)


def process_memory(process: psutil.Process) -> tuple[int, int, bool]:
    """(PSS, its anonymous and shared-memory part, in bytes; whether PSS fell back to RSS because it is unreadable).
    Zeros for a process already gone. The rest of PSS is pages of memory-mapped files (page cache the kernel can drop
    and read again), such as the token shards training maps: a file written in large blocks sits in large folios, and
    one touch maps a whole folio (up to 2 MB)."""
    try:
        try:
            rollup = Path(f"/proc/{process.pid}/smaps_rollup").read_text()
            fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", rollup, re.MULTILINE))
            if "Pss_Anon" in fields:
                return (int(fields["Pss"]) * 1024, (int(fields["Pss_Anon"]) + int(fields.get("Pss_Shmem", 0))) * 1024,
                        False)
            info = process.memory_full_info()
            return (info.pss, info.uss, False) if hasattr(info, "pss") else (info.rss, info.rss, True)
        except (psutil.AccessDenied, PermissionError):
            rss = process.memory_info().rss
            return rss, rss, True
    except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
        return 0, 0, False


def tree_memory(root: psutil.Process) -> tuple[int, int, bool]:
    """process_memory summed over `root` and all its descendants (a stage may start workers); PSS counts shared
    pages once."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, False
    sizes = [process_memory(process) for process in processes]
    return sum(s[0] for s in sizes), sum(s[1] for s in sizes), any(s[2] for s in sizes)


def run_stage(name: str, argv: list[str], logs: Path, label: str) -> dict:
    """Run one stage, polling its process tree's memory; stop the script with its stderr's tail if it fails."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | OFFLINE
    command = [sys.executable, "-m", "talelab", *argv]
    out_log, err_log = logs / f"{name}-{label}.out", logs / f"{name}-{label}.err"
    print(f"{name}: talelab {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    with open(out_log, "wb") as out, open(err_log, "wb") as err:  # files, not pipes: a full pipe would stall it
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
    root, peak, peak_anon, fallback = psutil.Process(process.pid), 0, 0, False
    while True:
        # wait4 instead of Popen.wait: it also returns the stage's rusage (ru_maxrss)
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        pss, anon, fell_back = tree_memory(root)
        peak, peak_anon, fallback = max(peak, pss), max(peak_anon, anon), fallback or fell_back
        time.sleep(POLL_S)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here; tell Popen so it does not wait again
    if process.returncode:
        lines = [line.rsplit("\r", 1)[-1] for line in err_log.read_text(errors="replace").splitlines()]
        sys.exit(f"{name} failed with exit code {process.returncode}: {' '.join(command)}\n"
                 f"last lines of {err_log}:\n" + "\n".join(lines[-20:]))
    return {"stage": name, "command": command, "seconds": seconds, "peak_pss_bytes": peak,
            "peak_anon_bytes": peak_anon, "rss_fallback": fallback,
            "max_rss_bytes": usage.ru_maxrss * 1024}  # Linux reports KiB


def stage_commands(corpus: Path, outputs: dict[str, Path]) -> list[tuple[str, list[str]]]:
    prepared, tok, model = (str(outputs[key]) for key in ("prepared", "tok", "model"))
    return [
        ("prepare", ["prepare", "--source", str(corpus), "--format", "eot", "--out", prepared]),
        ("tokenizer", ["tokenizer", "train", "--data", prepared, "--out", tok, "--kind", "bpe", "--vocab-size",
                       "4096"]),
        ("pretokenize", ["pretokenize", "--data", prepared, "--tokenizer", tok]),
        # the tiny preset evaluates and checkpoints every 10 steps; here only once, at step 100
        ("train", ["train", "--preset", "tiny", "--data", prepared, "--tokenizer", tok, "--out", model,
                   "--max-steps", "100", "--eval-interval", "100", "--checkpoint-interval", "100", "--no-progress"]),
        ("memorization", ["eval", model, "--suite", "memorization", "--train-data", prepared, "--samples", "16",
                          "--max-new-tokens", "128", "--out", str(outputs["eval"]), "--no-progress"]),
    ]


def input_bytes(name: str, corpus: Path, prepared: Path) -> int | None:
    """What a stage's MB/s is measured on (module docstring); None for train and memorization."""
    if name == "prepare":
        return corpus.stat().st_size
    if name in ("tokenizer", "pretokenize"):
        return sum((prepared / split).stat().st_size for split in SPLITS if (prepared / split).is_file())
    return None


def goals(stages: list[dict]) -> dict[str, bool]:
    met = {f"{s['stage']} >= {GOAL_MB_PER_S[s['stage']]} MB/s": s["mb_per_s"] >= GOAL_MB_PER_S[s["stage"]]
           for s in stages if s["stage"] in GOAL_MB_PER_S}
    met[f"peak <= {GOAL_PEAK_BYTES / 1e9:g} GB in every stage"] = all(
        s["peak_pss_bytes"] <= GOAL_PEAK_BYTES for s in stages)
    return met


def print_table(results: dict) -> None:
    print(f"\n{results['size']} corpus ({results['corpus_bytes'] / 1e6:,.1f} MB), {results['machine']}, "
          f"{results['date']}")
    print(f"{'stage':<13} {'input MB':>9} {'seconds':>8} {'MB/s':>7} {'peak PSS GB':>12} {'anon GB':>8} "
          f"{'x corpus':>9} {'max RSS GB':>11}")
    for s in results["stages"]:
        mb = f"{s['input_bytes'] / 1e6:,.1f}" if s["input_bytes"] is not None else "-"
        rate = f"{s['mb_per_s']:.1f}" if s["mb_per_s"] is not None else "-"
        print(f"{s['stage']:<13} {mb:>9} {s['seconds']:>8.1f} {rate:>7} {s['peak_pss_bytes'] / 1e9:>12.3f} "
              f"{s.get('peak_anon_bytes', 0) / 1e9:>8.3f} {s['peak_over_corpus']:>9.2f} "
              f"{s['max_rss_bytes'] / 1e9:>11.3f}")
    print("input: the corpus file for prepare, train.jsonl + val.jsonl + test.jsonl for tokenizer and pretokenize; "
          "seconds include each process's start; peak PSS: the whole process tree, polled every 0.1 s; "
          "anon: its anonymous and shared-memory part (the rest is pages of memory-mapped files, which the kernel can "
          "drop); max RSS: the largest single process (wait4); MB = 10^6, GB = 10^9 bytes")
    for goal, met in results["goals"].items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")


def compare(results: dict, other_path: Path) -> dict[str, float]:
    """This run's peak per stage as a multiple of another run's (the goal: <= 1.10x from 200MB to 2GB)."""
    other = json.loads(other_path.read_text())
    before = {s["stage"]: s for s in other["stages"]}
    ratios = {s["stage"]: s["peak_pss_bytes"] / before[s["stage"]]["peak_pss_bytes"] for s in results["stages"]
              if s["stage"] in before}
    print(f"\npeak of this {results['size']} run / the {other['size']} run ({other_path}); "
          f"goal: at most {GOAL_PEAK_GROWTH:.2f}x from 200MB to 2GB")
    for s in results["stages"]:
        if s["stage"] in ratios:
            ratio = ratios[s["stage"]]
            anon_before = before[s["stage"]].get("peak_anon_bytes")
            anon = f"   anon {s['peak_anon_bytes'] / anon_before:5.2f}x" if anon_before else ""
            print(f"{s['stage']:<13} PSS {ratio:5.2f}x  {'within' if ratio <= GOAL_PEAK_GROWTH else 'over'} "
                  f"{GOAL_PEAK_GROWTH:.2f}x{anon}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("size", type=parse_size, help="corpus size: 20MB, 200MB, 2GB (decimal units)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the stages' outputs (the corpus is always kept)")
    parser.add_argument("--compare", type=Path, help="results-<SIZE>.json of another run: print peak ratios")
    args = parser.parse_args()
    label, size = args.size
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    outputs = {key: work / f"{key}-{label}" for key in ("prepared", "tok", "model", "eval")}
    machine = f"{cpu_name()}, {os.cpu_count()} CPUs"
    print(f"machine: {machine}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    corpus = work / f"corpus-{label}.txt"
    write_corpus(corpus, size)
    stages = []
    try:
        for path in outputs.values():  # left by a --keep run: pretokenize would skip, train would find a run
            shutil.rmtree(path, ignore_errors=True)
        for name, argv in stage_commands(corpus, outputs):
            stage = run_stage(name, argv, work / "logs", label)
            stage["input_bytes"] = input_bytes(name, corpus, outputs["prepared"])
            stage["mb_per_s"] = stage["input_bytes"] / 1e6 / stage["seconds"] if stage["input_bytes"] else None
            stage["peak_over_corpus"] = stage["peak_pss_bytes"] / corpus.stat().st_size
            stages.append(stage)
    finally:
        if not args.keep:
            for path in outputs.values():
                shutil.rmtree(path, ignore_errors=True)

    results = {"size": label, "corpus": str(corpus), "corpus_bytes": corpus.stat().st_size, "machine": machine,
               "cpus": os.cpu_count(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "stages": stages, "goals": goals(stages)}
    print_table(results)
    if args.compare:
        results["compare"] = {"other": str(args.compare), "peak_ratio": compare(results, args.compare)}
    out = work / f"results-{label}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
