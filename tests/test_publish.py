"""Model cards (the README.md with the Hub's metadata and talelab's figures) and `talelab push`, against a stand-in
for the Hub's HTTP API on loopback: the same create-repo, preupload and commit requests huggingface_hub sends to
huggingface.co, answered by a small server that keeps what it receives."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from talelab.cli import main
from talelab.models.storage import load_model, read_config, resolve_model_dir
from talelab.publish import model_directory, upload_list, write_model_card


def card_parts(directory: Path) -> tuple[dict, str]:
    """The card's YAML metadata and its markdown body."""
    _, front, body = (directory / "README.md").read_text().split("---\n", 2)
    return yaml.safe_load(front), body


def test_a_trained_run_s_card_names_its_data_and_its_measured_figures(tiny_run):
    write_model_card(tiny_run, "train")
    metadata, body = card_parts(tiny_run)
    assert metadata == {"license": "mit", "library_name": "talelab", "pipeline_tag": "text-generation",
                        "tags": ["talelab", "text-generation", "story-generation"],
                        "datasets": ["roneneldan/TinyStories"]}  # the prepared data came from data/tinystories/
    saved = read_config(resolve_model_dir(tiny_run))
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    last_val = [r for r in records if "val_loss" in r][-1]
    assert f"({saved['parameters']:,} parameters;" in body
    assert f"| bits per byte, held-out split of the training data | {last_val['val_bpb']:.4f} |" in body
    assert f"| tokens | {saved['step'] * 8 * 64:,} |" in body  # the tiny preset: 8 windows of 64 tokens a step
    assert f"| steps | {saved['step']} |" in body and "| written on |" in body
    assert "talelab train --config config.yaml" in body


def test_an_export_and_an_adapter_get_the_hugging_face_metadata(tmp_path, stories260k, stories260k_hf):
    export = tmp_path / "export"
    assert main(["convert", "hf", "--model", str(stories260k), "--out", str(export)]) == 0
    metadata, body = card_parts(export)
    assert metadata["library_name"] == "transformers" and "base_model" not in metadata
    parameters = sum(p.numel() for p in load_model(export)[0].parameters())
    assert f"llama causal language model ({parameters:,} parameters)" in body
    assert "talelab convert --config config.yaml" in body and (export / "config.yaml").is_file()

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(stories260k_hf),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    write_model_card(adapter)
    metadata, body = card_parts(adapter)
    assert metadata["library_name"] == "peft" and metadata["base_model"] == str(stories260k_hf)
    assert "LoRA adapter (rank 4, alpha 8)" in body


def test_what_is_not_a_model_has_no_card(tmp_path):
    assert model_directory(tmp_path) is None
    assert main(["push", str(tmp_path), "--repo", "me/nothing"]) == 2  # an input error


class FakeHub(BaseHTTPRequestHandler):
    """The three requests of a push: create the repo, ask how to upload each file, commit them."""

    received: dict = {}

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.setdefault("authorization", self.headers.get("Authorization"))
        if self.path == "/api/repos/create":
            self.received["create"] = json.loads(body)
            return self.answer({"url": f"http://{self.headers['Host']}/me/tiny", "name": "me/tiny"})
        if self.path == "/api/validate-yaml":  # the Hub checks a README.md's metadata before it is committed
            content = json.loads(body)["content"]
            try:
                self.received["metadata"] = yaml.safe_load(content.split("---\n")[1])
            except (yaml.YAMLError, IndexError) as e:
                return self.answer({"errors": [{"message": str(e)}]}, status=400)
            return self.answer({})
        if "/preupload/" in self.path:  # every file inline ("regular"), so no LFS storage is needed
            files = json.loads(body)["files"]
            return self.answer({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
        if "/commit/" in self.path:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            self.received["commit_path"] = self.path
            self.received["files"] = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                                      for line in lines if line["key"] == "file"}
            return self.answer({"commitUrl": f"http://{self.headers['Host']}/me/tiny/commit/{'0' * 40}",
                                "commitOid": "0" * 40})
        self.answer({"error": f"no route {self.path}"}, status=404)

    def answer(self, payload: dict, status: int = 200):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextmanager
def fake_hub(handler=FakeHub):
    handler.received = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.received
    finally:
        server.shutdown()


def push_process(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test_token", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "talelab", "push", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.slow
def test_push_uploads_the_latest_model_with_its_card_and_not_the_optimizer_state(tiny_run):
    with fake_hub() as (url, received):
        done = push_process(str(tiny_run), "--repo", "me/tiny", "--private", "--endpoint", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"/me/tiny/commit/{'0' * 40}")
    assert received["authorization"] == "Bearer hf_test_token"
    assert received["create"]["name"] == "tiny" and received["create"]["visibility"] == "private"
    assert received["commit_path"] == "/api/models/me/tiny/commit/main"
    assert received["metadata"] == card_parts(tiny_run)[0] and received["metadata"]["library_name"] == "talelab"
    expected = dict(upload_list(tiny_run))
    assert set(received["files"]) == set(expected) >= {"README.md", "model.safetensors", "config.json",
                                                        "tokenizer.json", "metrics.jsonl"}
    assert all(received["files"][name] == path.read_bytes() for name, path in expected.items())
    assert not any(name.endswith(".pt") or "/" in name for name in received["files"])
    model, _, _ = load_model(tiny_run)  # what was pushed is the latest checkpoint's weights
    assert received["files"]["model.safetensors"] == (resolve_model_dir(tiny_run) / "model.safetensors").read_bytes()
    assert sum(p.numel() for p in model.parameters()) > 0 and torch.is_tensor(next(model.parameters()))


class RefusingHub(FakeHub):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.answer({"error": "Invalid credentials in Authorization header"}, status=401)


@pytest.mark.slow
def test_a_refused_token_is_one_line_and_exit_1(tiny_run):
    with fake_hub(RefusingHub) as (url, _):
        done = push_process(str(tiny_run), "--repo", "me/tiny", "--endpoint", url)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("talelab: error: push to me/tiny: ") and "401" in done.stderr
