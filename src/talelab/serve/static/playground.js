// The story playground: plain JavaScript against the server's own OpenAI-compatible API, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const KNOBS = ["temperature", "top_p", "repetition_penalty", "max_tokens"];
let models = [];
let running = null; // AbortController of the generation in progress

async function loadModels() {
  try {
    const res = await fetch("/v1/models");
    models = (await res.json()).data;
  } catch (e) {
    $("server-status").textContent = "server unreachable";
    return;
  }
  for (const select of [$("model-a"), $("model-b")]) {
    select.replaceChildren(...models.map((m) => new Option(`${m.id} · ${formatCount(m.parameters)} params`, m.id)));
  }
  if (models.length > 1) $("model-b").selectedIndex = 1;
  $("server-status").textContent = `${models.length} model${models.length === 1 ? "" : "s"} served`;
}

function formatCount(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${Math.round(n / 1e3)}K`;
  return String(n);
}

function request(model, seed) {
  const knobs = {
    model, seed, stream: true,
    temperature: Number($("temperature").value), top_p: Number($("top_p").value),
    repetition_penalty: Number($("repetition_penalty").value), max_tokens: Number($("max_tokens").value),
    top_k: Number($("top_k").value) || 0,
  };
  // an instruct model (its card says chat) answers the text as a user message, through its chat template
  if (models.find((m) => m.id === model)?.chat) {
    return { ...knobs, messages: [{ role: "user", content: $("beginning").value }], logprobs: true, top_logprobs: 5 };
  }
  const features = [...document.querySelectorAll(".chip[aria-pressed=true]")].map((b) => b.dataset.feature);
  return { ...knobs, prompt: $("beginning").value, features, logprobs: 5 };
}

// Chat logprobs ({content: [{token, logprob, top_logprobs}]}) in the completions form the token view reads.
function completionLogprobs(logprobs) {
  if (!logprobs?.content) return logprobs;
  return {
    tokens: logprobs.content.map((c) => c.token),
    token_logprobs: logprobs.content.map((c) => c.logprob),
    top_logprobs: logprobs.content.map((c) => Object.fromEntries(c.top_logprobs.map((t) => [t.token, t.logprob]))),
  };
}

// Reads OpenAI-style server-sent events: text chunks, then a chunk with finish_reason (and logprobs).
async function streamCompletion(body, signal, onText, onFinish) {
  const res = await fetch(body.messages ? "/v1/chat/completions" : "/v1/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  if (!res.ok) {
    const problem = await res.json().catch(() => ({}));
    throw new Error(problem.error?.message || `HTTP ${res.status}`);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const message = JSON.parse(data);
        if (message.error) throw new Error(message.error.message);
        const choice = message.choices[0];
        if (!choice) continue; // a usage chunk
        const text = choice.text ?? choice.delta?.content;
        if (text) onText(text);
        if (choice.finish_reason) onFinish({ ...choice, logprobs: completionLogprobs(choice.logprobs) });
      }
    }
  }
}

function storyCard(modelId) {
  const card = $("story-template").content.firstElementChild.cloneNode(true);
  const info = models.find((m) => m.id === modelId);
  card.dataset.model = modelId;
  card.querySelector(".model-name").textContent = modelId;
  card.querySelector(".model-meta").textContent =
    info ? `${formatCount(info.parameters)} parameters · context ${info.context_length}` : "";
  card.querySelector(".prompt").textContent = $("beginning").value;
  return card;
}

async function runStory(card, body, signal) {
  const generated = card.querySelector(".generated");
  const stats = card.querySelector(".story-stats");
  const started = performance.now();
  card.classList.add("writing");
  stats.textContent = "writing…";
  try {
    let chunks = 0;
    await streamCompletion(body, signal, (text) => {
      generated.textContent += text;
      card.dataset.chunks = ++chunks; // how many pieces the story arrived in (the browser test reads it)
    }, (choice) => {
      const tokens = choice.logprobs ? choice.logprobs.tokens.length : 0;
      const seconds = (performance.now() - started) / 1000;
      const ending = choice.finish_reason === "stop" ? "the story ended" : "reached max tokens";
      stats.textContent = `${tokens} tokens · ${(tokens / seconds).toFixed(0)} tokens/s · ${ending} · seed ${body.seed}`;
      if (choice.logprobs) showTokens(card, choice.logprobs);
      card.classList.add("done");
    });
  } catch (e) {
    if (e.name === "AbortError") {
      stats.textContent = "stopped";
    } else {
      stats.textContent = "";
      const error = document.createElement("p");
      error.className = "error";
      error.textContent = e.message;
      card.querySelector(".story-text").after(error);
    }
  } finally {
    card.classList.remove("writing");
  }
}

// Replaces the streamed text with one span per token, shaded by how unlikely the model found it.
function showTokens(card, logprobs) {
  const generated = card.querySelector(".generated");
  generated.replaceChildren();
  logprobs.tokens.forEach((text, i) => {
    if (!text) return; // part of a multi-byte character: its text arrives with the next token
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = text;
    span.tabIndex = 0;
    const lp = logprobs.token_logprobs[i];
    const p = lp === null ? 0 : Math.exp(lp);
    span.style.setProperty("--surprise", (1 - p).toFixed(2));
    span.title = lp === null ? "outside the top 5" : `${(100 * p).toFixed(1)}%`;
    const pick = () => showAlternatives(card, span, text, logprobs.top_logprobs[i], lp);
    span.addEventListener("click", pick);
    span.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
    generated.append(span);
  });
}

function visible(text) {
  return text.replaceAll(" ", "␣").replaceAll("\n", "↵");
}

function showAlternatives(card, span, chosen, top, chosenLogprob) {
  card.querySelectorAll(".tok.selected").forEach((s) => s.classList.remove("selected"));
  span.classList.add("selected");
  const panel = card.querySelector(".alternatives");
  const rows = Object.entries(top).map(([text, lp]) => [text, Math.exp(lp)]).sort((a, b) => b[1] - a[1]);
  const title = document.createElement("h4");
  title.textContent = `Top 5 where the model wrote “${visible(chosen)}”`;
  const list = document.createElement("ol");
  for (const [text, p] of rows) {
    const item = document.createElement("li");
    if (text === chosen) item.className = "chosen";
    const label = document.createElement("code");
    label.textContent = visible(text);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.setProperty("--p", p.toFixed(4));
    const value = document.createElement("span");
    value.className = "p";
    value.textContent = `${(100 * p).toFixed(1)}%`;
    item.append(label, bar, value);
    list.append(item);
  }
  const footnote = document.createElement("p");
  footnote.className = "note";
  footnote.textContent = chosenLogprob === null
    ? "The sampled token was outside these five."
    : "Probabilities after the repetition penalty, before temperature and top-k/top-p.";
  panel.replaceChildren(title, list, footnote);
  panel.hidden = false;
}

async function generate(event) {
  event.preventDefault();
  if (running) return;
  const chosen = [$("model-a").value];
  if ($("compare").checked) chosen.push($("model-b").value);
  const seedField = $("seed").value.trim();
  // one seed for every column, shown with the story, so that a run can be repeated
  const seed = seedField === "" ? Math.floor(Math.random() * 1e9) : Number(seedField);
  $("hint").textContent = "Click any word of a finished story to see the model's top 5 there; the warmer its " +
    "underline, the less likely the model found it.";
  const stories = $("stories");
  stories.classList.toggle("two", chosen.length === 2);
  const cards = chosen.map(storyCard);
  stories.replaceChildren(...cards);
  running = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  try {
    await Promise.all(cards.map((card, i) => runStory(card, request(chosen[i], seed), running.signal)));
  } finally {
    running = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

function setup() {
  for (const id of KNOBS) {
    const input = $(id);
    const show = () => { $(`${id}-out`).textContent = input.value; };
    input.addEventListener("input", show);
    show();
  }
  for (const chip of document.querySelectorAll(".chip")) {
    chip.addEventListener("click", () => {
      chip.setAttribute("aria-pressed", chip.getAttribute("aria-pressed") === "true" ? "false" : "true");
    });
  }
  $("compare").addEventListener("change", () => { $("model-b-field").hidden = !$("compare").checked; });
  $("controls").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => running?.abort());
  $("beginning").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("controls").requestSubmit();
  });
  loadModels();
}

setup();
