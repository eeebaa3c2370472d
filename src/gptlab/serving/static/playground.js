// gptlab playground: a client of the server that served this page.
//   POST /v1/completions  OpenAI's completions, streamed, with logprobs: the text, each token's
//                         probability and its top-5 alternatives
//   POST /v1/inspect      gptlab's: attention and next-token numbers for "look inside", computed by
//                         the same functions as `gptlab inspect`'s pictures
// No libraries and no build step: the DOM, fetch, and <canvas> for the heatmaps.
"use strict";

const $ = (id) => document.getElementById(id);
const ALTERNATIVES = 5;
const WINDOW = 40; // the heatmap shows the last WINDOW tokens

const state = {
  model: null, // the model id, from /v1/models
  blockSize: null, // the model's context, in tokens
  prompt: "", // the text the shown continuation follows
  spans: [], // the continuation: [{text, tokens: [{token, p, top: [[token, p], ...]}], branch}]
  pending: [], // tokens whose text has not come yet (the start of a multi-byte character)
  controller: null, // aborts the running request (Stop)
  inspect: null, // the last /v1/inspect answer
  head: 0,
};

// ---------------------------------------------------------------- messages

function showMessage(text) {
  $("message-text").textContent = text;
  $("message").hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
}

// ---------------------------------------------------------------- talking to the server

function headers() {
  const key = $("api_key").value.trim();
  return { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}

// fetch, with every failure turned into an Error whose message can be shown as it is.
async function call(path, body, signal) {
  let response;
  try {
    response = await fetch(
      path,
      body === undefined
        ? { headers: headers() }
        : { method: "POST", headers: headers(), body: JSON.stringify(body), signal },
    );
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new Error(
      "Cannot reach the gptlab server: has `gptlab serve` stopped? Start it again, then reload this page.",
    );
  }
  if (response.ok) return response;
  let detail = `${response.status} ${response.statusText}`;
  try {
    detail = (await response.json()).error.message; // OpenAI's error shape: {"error": {"message": ...}}
  } catch {} // not JSON: keep the status line
  if (response.status === 401) detail += " (enter the server's API key under Connection)";
  throw new Error(`The server refused the request: ${detail}`);
}

// The server-sent events of a streamed response, parsed: `data: {...}` lines until `data: [DONE]`.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new Error("The connection to the server broke off mid-stream: has `gptlab serve` stopped?");
    }
    if (chunk.done) throw new Error("The stream ended before the server said it was done: has `gptlab serve` stopped?");
    buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new Error(`The server stopped with an error: ${parsed.error.message}`);
        yield parsed;
      }
    }
  }
}

// ---------------------------------------------------------------- settings

// Each setting has a slider and a number field kept in step.
for (const name of ["temperature", "top_k", "top_p", "max_tokens"]) {
  const field = $(name);
  const slider = $(`${name}-range`);
  slider.addEventListener("input", () => (field.value = slider.value));
  field.addEventListener("input", () => (slider.value = field.value));
}

// The request's sampling fields; a field that is not a number is refused here, the server judges the rest.
function settings() {
  const number = (id, what, whole) => {
    const value = Number($(id).value);
    if ($(id).value.trim() === "" || !Number.isFinite(value) || (whole && !Number.isInteger(value))) {
      throw new Error(`${what} must be a ${whole ? "whole number" : "number"}; got "${$(id).value}".`);
    }
    return value;
  };
  const body = {
    temperature: number("temperature", "Temperature", false),
    max_tokens: number("max_tokens", "Max tokens", true),
  };
  const topK = number("top_k", "Top-k", true);
  const topP = number("top_p", "Top-p", false);
  if (topK !== 0) body.top_k = topK; // gptlab's extension; 0 means all tokens: leave it out
  if (topP !== 1) body.top_p = topP;
  if ($("seed").value.trim() !== "") body.seed = number("seed", "Seed", true);
  return body;
}

// ---------------------------------------------------------------- the text and its tokens

const shown = (text) => text.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
const percent = (p) =>
  p >= 0.995 ? "100%" : p >= 0.1 ? `${(100 * p).toFixed(0)}%` : p >= 0.001 ? `${(100 * p).toFixed(1)}%` : "<0.1%";
// Alternatives that cannot be typed as text: end-of-text, and a partial multi-byte character (U+FFFD).
const EOT = "<|endoftext|>";
const typeable = (token) => token !== "" && token !== EOT && !token.includes("\ufffd");

// Colour by probability on a log scale: 0.1% or less is coral, 100% is pale mint (as in the legend).
const STOPS = [
  [244, 160, 140],
  [249, 217, 138],
  [207, 233, 180],
  [233, 245, 239],
];
function tokenColour(p) {
  const x = Math.min(1, Math.max(0, 1 + Math.log10(Math.max(p, 1e-9)) / 3)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const mix = STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * (x - i)));
  return `rgb(${mix.join(",")})`;
}

// One streamed choice: its text and the logprobs of the tokens that made it.
function addChoice(choice) {
  const lp = choice.logprobs || { tokens: [], token_logprobs: [], top_logprobs: [] };
  lp.tokens.forEach((token, i) => {
    // the server lists the sampled token among the alternatives even when it is not in the top 5
    const top = Object.entries(lp.top_logprobs[i] || {}).map(([t, l]) => [t, Math.exp(l)]);
    top.sort((a, b) => b[1] - a[1]);
    const p = Math.exp(lp.token_logprobs[i]);
    const listed = top.slice(0, ALTERNATIVES);
    if (!listed.some(([t]) => t === token)) listed.push(...top.filter(([t]) => t === token));
    state.pending.push({ token, p, top: listed });
  });
  if (!choice.text) return; // part of a character: it shows with the token that completes it
  const tokens = state.pending;
  state.pending = [];
  // One span per token where the tokens spell the text exactly; else one span for the lot, so a
  // multi-byte character cut over several byte-level tokens is never split.
  if (tokens.length > 1 && tokens.every((t) => t.token !== "") && tokens.map((t) => t.token).join("") === choice.text) {
    tokens.forEach((t) => addSpan({ text: t.token, tokens: [t] }));
  } else {
    addSpan({ text: choice.text, tokens });
  }
}

function addSpan(span) {
  state.spans.push(span);
  $("doc").append(spanElement(span, state.spans.length - 1));
}

// A span's probability: the product of its tokens' (a character cut into bytes takes several tokens).
const spanProbability = (span) => span.tokens.reduce((product, t) => product * t.p, 1);

function spanElement(span, index) {
  const el = document.createElement("span");
  el.textContent = span.text;
  el.dataset.index = index;
  el.dataset.tokens = span.tokens.length;
  if (span.tokens.length) {
    const p = spanProbability(span);
    el.className = "tok" + (span.text.includes("\n") ? " nl" : "") + (span.branch ? " branch" : "");
    el.tabIndex = 0;
    el.style.background = tokenColour(p);
    el.setAttribute("aria-label", `${shown(span.text)}, probability ${percent(p)}`);
  }
  return el;
}

function renderDoc() {
  const doc = $("doc");
  doc.replaceChildren();
  const prompt = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = state.prompt;
  doc.append(prompt, ...state.spans.map(spanElement));
}

const currentText = () =>
  state.spans.length || state.controller ? state.prompt + state.spans.map((s) => s.text).join("") : $("prompt").value;

// ---------------------------------------------------------------- generating

// Continue `base` + the text of `kept`: spans already shown (a branch keeps the text it branched from).
async function generate(base, kept = []) {
  if (!state.model && !(await connect())) return;
  let body;
  try {
    const prompt = base + kept.map((s) => s.text).join("");
    // truncate: a text longer than the model's context is continued from its last block_size tokens
    const options = { stream: true, logprobs: ALTERNATIVES, stream_options: { include_usage: true }, truncate: true };
    body = { model: state.model, prompt, ...settings(), ...options };
  } catch (e) {
    return showMessage(e.message);
  }
  stop();
  clearMessage();
  hidePopover();
  const controller = (state.controller = new AbortController());
  state.prompt = base;
  state.spans = kept;
  state.pending = [];
  renderDoc();
  setRunning(true);
  const started = performance.now();
  let first = null;
  let count = 0;
  let finish = "";
  let seen = 0; // tokens of the text the model saw (usage.prompt_tokens)
  try {
    const response = await call("/v1/completions", body, controller.signal);
    for await (const chunk of events(response)) {
      const choice = chunk.choices[0];
      if (!choice) {
        seen = chunk.usage.prompt_tokens; // the last chunk: usage only
        continue;
      }
      addChoice(choice);
      count += choice.logprobs ? choice.logprobs.tokens.length : 0;
      first = first ?? performance.now();
      showSpeed(count, started, first);
      finish = choice.finish_reason || finish;
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else showMessage(e.message);
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      setRunning(false);
      const why = { stop: "the model ended the text", length: "max tokens reached", stopped: "stopped by you" }[finish];
      $("stats").textContent += why ? ` · ${why}` : "";
      if (seen && seen === state.blockSize)
        $("stats").textContent += ` · the model saw only the last ${seen} tokens of the text (its context)`;
      refreshInspect();
    }
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

function setRunning(running) {
  $("generate").disabled = running;
  $("stop").disabled = !running;
  if (running) $("stats").textContent = "generating…";
}

// tokens/s counts the tokens after the first, from the moment the first came (the prompt's cost is apart).
function showSpeed(count, started, first) {
  const now = performance.now();
  const rate = count > 1 && now > first ? ((count - 1) * 1000) / (now - first) : 0;
  $("speed").textContent = rate ? `${rate.toFixed(1)} tok/s` : "– tok/s";
  $("stats").textContent =
    `${count} tokens · first after ${((first - started) / 1000).toFixed(2)} s` +
    (rate ? ` · ${rate.toFixed(1)} tokens/s` : "");
}

// ---------------------------------------------------------------- alternatives and branching

let hideTimer = null;

function showPopover(el) {
  const index = Number(el.dataset.index);
  const span = state.spans[index];
  const first = span.tokens[0];
  const pop = $("popover");
  clearTimeout(hideTimer);
  document.querySelectorAll(".tok.active").forEach((t) => t.classList.remove("active"));
  el.classList.add("active");
  pop.replaceChildren();
  pop.insertAdjacentHTML(
    "beforeend",
    `<div class="pop-head"><code></code><b></b></div><div class="pop-sub"></div><ol class="alts"></ol>`,
  );
  pop.querySelector("code").textContent = shown(span.text);
  pop.querySelector("b").textContent = percent(spanProbability(span));
  const parts =
    span.tokens.length > 1 ? `${span.tokens.length} tokens make this text; alternatives to the first. ` : "";
  pop.querySelector(".pop-sub").textContent =
    parts +
    (state.controller ? "The likeliest here; branch once it stops." : "The likeliest here; click one to branch.");
  for (const [token, p] of first.top) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "alt" + (token === first.token ? " chosen" : "");
    button.dataset.token = token;
    button.disabled = !typeable(token) || Boolean(state.controller);
    button.title = typeable(token)
      ? `continue the text with ${JSON.stringify(token)}`
      : token === EOT
        ? "the end of the text"
        : "part of a multi-byte character: it cannot be typed as text";
    button.innerHTML = `<code></code><span class="bar"></span><span class="pct"></span>`;
    button.querySelector("code").textContent = shown(token);
    button.querySelector(".bar").style.width = `${Math.max(2, 100 * p)}%`;
    button.querySelector(".pct").textContent = percent(p);
    button.addEventListener("click", () => branch(index, token, p, first.top));
    const item = document.createElement("li");
    item.append(button);
    pop.querySelector("ol").append(item);
  }
  const box = el.getBoundingClientRect();
  pop.style.left = `${Math.min(window.scrollX + box.left, window.scrollX + document.documentElement.clientWidth - 306)}px`;
  pop.style.top = `${window.scrollY + box.bottom + 6}px`;
  pop.hidden = false;
}

function hidePopover() {
  $("popover").hidden = true;
  document.querySelectorAll(".tok.active").forEach((t) => t.classList.remove("active"));
}

// Branch: keep the text before the token, put `token` in its place, and generate from there.
function branch(index, token, p, top) {
  const kept = state.spans.slice(0, index);
  kept.push({ text: token, tokens: [{ token, p, top }], branch: true });
  generate(state.prompt, kept);
}

// Mouse: hovering a token shows its alternatives; they stay while the pointer is on them.
// Keyboard: focusing a token shows them; Enter or ↓ moves into the list, ↑/↓ move in it, Escape leaves.
const isToken = (el) => el.classList.contains("tok");
let quiet = false; // Escape gives focus back to the token without showing its alternatives again
const doc = $("doc");
doc.addEventListener("mouseover", (e) => isToken(e.target) && showPopover(e.target));
doc.addEventListener("mouseout", (e) => isToken(e.target) && (hideTimer = setTimeout(hidePopover, 300)));
doc.addEventListener("focusin", (e) => {
  if (isToken(e.target) && !quiet) showPopover(e.target);
  quiet = false;
});
doc.addEventListener("keydown", (e) => {
  if (!isToken(e.target)) return;
  if (e.key === "Escape") hidePopover();
  if (e.key === "Enter" || e.key === "ArrowDown") {
    e.preventDefault();
    if ($("popover").hidden) showPopover(e.target);
    const button = $("popover").querySelector(".alt:not(:disabled)");
    if (button) button.focus();
  }
});
$("popover").addEventListener("mouseenter", () => clearTimeout(hideTimer));
$("popover").addEventListener("mouseleave", () => (hideTimer = setTimeout(hidePopover, 300)));
$("popover").addEventListener("keydown", (e) => {
  const buttons = [...$("popover").querySelectorAll(".alt:not(:disabled)")];
  const at = buttons.indexOf(document.activeElement);
  if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    e.preventDefault();
    buttons[(at + (e.key === "ArrowDown" ? 1 : buttons.length - 1)) % buttons.length].focus();
  } else if (e.key === "Escape") {
    const token = document.querySelector(".tok.active");
    hidePopover();
    quiet = true;
    if (token) token.focus();
  }
});

// ---------------------------------------------------------------- look inside

// Blues, from near-white (0) to deep blue (1). The heatmaps colour by the square root of the weight,
// so the small weights most tokens spread around stay visible (the legend's ticks say where 0.1 lies).
const BLUES = [
  [247, 251, 255],
  [198, 219, 239],
  [107, 174, 214],
  [33, 113, 181],
  [8, 48, 107],
];
function blue(w) {
  const x = Math.sqrt(Math.min(1, Math.max(0, w))) * (BLUES.length - 1);
  const i = Math.min(BLUES.length - 2, Math.floor(x));
  return `rgb(${BLUES[i].map((c, k) => Math.round(c + (BLUES[i + 1][k] - c) * (x - i))).join(",")})`;
}

// Draw one head's T x T weights on a canvas: row = query (the token predicting), column = key.
// Above the diagonal is the causal mask (a token never sees the future): drawn grey, not as zero.
// With labels, queries are named left of their rows and keys above their columns (turned when long).
function drawHeatmap(canvas, weights, cell, labels) {
  const T = weights.length;
  const ctx = canvas.getContext("2d");
  const font = `${Math.min(12, cell + 1)}px ui-monospace, "DejaVu Sans Mono", monospace`;
  ctx.font = font;
  const names = labels ? labels.map((l) => (l.length > 10 ? l.slice(0, 9) + "…" : l)) : [];
  const widest = Math.max(0, ...names.map((l) => ctx.measureText(l).width));
  const turned = widest > cell; // keys written upright only where each fits its column
  const left = labels ? Math.ceil(widest) + 8 : 0;
  const top = labels ? (turned ? Math.ceil(widest) + 8 : 16) : 0;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = (left + T * cell) * ratio;
  canvas.height = (top + T * cell) * ratio;
  canvas.style.width = `${left + T * cell}px`;
  canvas.style.height = `${top + T * cell}px`;
  canvas.dataset.left = left;
  canvas.dataset.top = top;
  canvas.dataset.cell = cell;
  ctx.scale(ratio, ratio);
  for (let q = 0; q < T; q++) {
    for (let k = 0; k < T; k++) {
      ctx.fillStyle = k > q ? "#eef0f4" : blue(weights[q][k]);
      ctx.fillRect(left + k * cell, top + q * cell, cell, cell);
    }
  }
  if (!labels) return;
  ctx.font = font;
  ctx.fillStyle = "#4a4f63";
  ctx.textBaseline = "middle";
  const every = Math.ceil(11 / cell); // keep labels apart where cells are small
  for (let i = 0; i < T; i += every) {
    ctx.textAlign = "right";
    ctx.fillText(names[i], left - 6, top + (i + 0.5) * cell); // the query, left of its row
    ctx.save();
    ctx.translate(left + (i + 0.5) * cell, top - 6);
    if (turned) ctx.rotate(-Math.PI / 2); // read bottom to top, ending at the column
    ctx.textAlign = turned ? "left" : "center";
    ctx.fillText(names[i], 0, 0); // the key, above its column
    ctx.restore();
  }
}

function drawInspect() {
  const data = state.inspect;
  const labels = data.tokens.map((t) => t.label);
  const heads = data.attention;
  const T = labels.length;
  const cell = Math.max(6, Math.min(24, Math.floor(520 / T)));
  state.head = Math.min(state.head, data.n_head - 1);
  $("head").value = state.head;
  drawHeatmap($("heatmap"), heads[state.head], cell, labels);
  $("heat-caption").textContent =
    `Layer ${data.layer}, head ${state.head}: each row is a token, each column a token it attends to. Hover a cell for its weight.`;
  $("heads-title").textContent = `All ${data.n_head} heads of layer ${data.layer}`;
  $("heads").replaceChildren(
    ...heads.map((weights, h) => {
      const thumb = document.createElement("button");
      thumb.type = "button";
      thumb.className = "head-thumb" + (h === state.head ? " selected" : "");
      thumb.setAttribute("aria-label", `show head ${h}`);
      const canvas = document.createElement("canvas");
      drawHeatmap(canvas, weights, Math.max(1, Math.floor(84 / T)), null);
      thumb.append(canvas, `head ${h}`);
      thumb.addEventListener("click", () => ((state.head = h), drawInspect()));
      return thumb;
    }),
  );
  const top = data.next_tokens[0].prob;
  $("next").replaceChildren(
    ...data.next_tokens.flatMap((t) => {
      const label = document.createElement("code");
      label.textContent = t.label;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(1, (100 * t.prob) / top)}%`;
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = percent(t.prob);
      return [label, bar, pct];
    }),
  );
  const seen = data.truncated
    ? `the model's whole context: the text's last ${data.context_tokens} tokens`
    : `${data.context_tokens} tokens: end-of-text (a document starts), then the text`;
  const shownPart = data.start
    ? `; the last ${T} drawn (a row sums to less than 1 where earlier tokens took a share)`
    : "";
  $("inspect-note").textContent = `${seen}${shownPart} · next token at temperature ${data.temperature}`;
}

// Ask the server what the model computes for the current text, and draw it.
async function refreshInspect() {
  if ($("inspect-panel").hidden || state.controller) return; // not while generating: the CPU is busy
  if (!state.model && !(await connect())) return;
  const layer = Number($("layer").value || 0);
  try {
    const response = await call("/v1/inspect", {
      model: state.model,
      prompt: currentText(),
      layer,
      window: WINDOW,
      top: 10,
    });
    state.inspect = await response.json();
  } catch (e) {
    return showMessage(e.message);
  }
  const data = state.inspect;
  if ($("layer").options.length !== data.n_layer) {
    $("layer").replaceChildren(...Array.from({ length: data.n_layer }, (_, i) => new Option(String(i), i)));
    $("head").replaceChildren(...Array.from({ length: data.n_head }, (_, i) => new Option(String(i), i)));
    $("layer").value = data.layer;
  }
  drawInspect();
}

$("inspect-toggle").addEventListener("click", () => {
  const panel = $("inspect-panel");
  panel.hidden = !panel.hidden;
  $("inspect-toggle").setAttribute("aria-expanded", String(!panel.hidden));
  $("inspect-toggle").textContent = `${panel.hidden ? "▸" : "▾"} Look inside`;
  refreshInspect();
});
$("layer").addEventListener("change", refreshInspect);
$("head").addEventListener("change", () => ((state.head = Number($("head").value)), drawInspect()));
$("heatmap").addEventListener("mousemove", (e) => {
  // which cell is under the mouse: the weight of query row q on key column k
  const data = state.inspect;
  const { left, top, cell } = $("heatmap").dataset;
  const box = $("heatmap").getBoundingClientRect();
  const k = Math.floor((e.clientX - box.left - left) / cell);
  const q = Math.floor((e.clientY - box.top - top) / cell);
  if (!data || q < 0 || k < 0 || q >= data.tokens.length || k >= data.tokens.length) return;
  const weight = k > q ? "masked (the future)" : data.attention[state.head][q][k].toFixed(3);
  $("heat-caption").textContent =
    `Layer ${data.layer}, head ${state.head}: ${data.tokens[q].label} → ${data.tokens[k].label}: ${weight}`;
});

// ---------------------------------------------------------------- start

$("generate").addEventListener("click", () => generate($("prompt").value));
$("stop").addEventListener("click", stop);
$("message-close").addEventListener("click", clearMessage);
$("connection").addEventListener("submit", (e) => e.preventDefault()); // Enter in the key field: nothing to send
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate($("prompt").value);
});

// The model's name and context (max tokens go up to it): a first sign of whether the server is there.
// Tried again before each request until it works (e.g. once the API key is typed in). True: connected.
async function connect() {
  try {
    const model = (await (await call("/v1/models")).json()).data[0].id;
    const shape = await (await call("/v1/inspect", { model, prompt: "", window: 1, top: 1 })).json();
    [state.model, state.blockSize] = [model, shape.block_size];
  } catch (e) {
    $("model").textContent = "not connected";
    showMessage(e.message);
    return false;
  }
  clearMessage();
  $("model").textContent = `${state.model} · ${state.blockSize}-token context`;
  for (const id of ["max_tokens", "max_tokens-range"]) $(id).max = state.blockSize;
  if (Number($("max_tokens").value) > state.blockSize)
    $("max_tokens").value = $("max_tokens-range").value = state.blockSize;
  return true;
}
connect();
