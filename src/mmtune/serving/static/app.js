// The demo page: a small client of the server's OpenAI-compatible API (streamed answers over SSE).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, auth: false, controller: null };

function setImage(dataUrl) {
  state.image = dataUrl;
  $("preview").src = dataUrl || "";
  $("preview").hidden = !dataUrl;
  $("drop-hint").hidden = !!dataUrl;
}

function readFile(file) {
  const reader = new FileReader();
  reader.onload = () => setImage(reader.result);
  reader.readAsDataURL(file);
}

async function loadExample(url) {
  const blob = await (await fetch(url)).blob();
  readFile(blob);
}

function bindSlider(id) {
  const show = () => { $(id + "-out").textContent = $(id).value; };
  $(id).addEventListener("input", show);
  show();
}

async function loadConfig() {
  const config = await (await fetch("/api/config")).json();
  $("model-name").textContent = config.model;
  for (const name of config.templates) {
    const option = new Option(name, name, false, name === config.default_template);
    $("template").add(option);
  }
  $("template").value = config.default_template;
  for (const url of config.examples || []) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "example image";
    img.className = "example";
    img.addEventListener("click", () => loadExample(url));
    $("examples").append(img);
  }
  $("max-tokens").max = config.max_new_tokens_limit || 1024;
  state.auth = config.auth;
  $("key-field").hidden = !config.auth;
}

function buildRequest() {
  const messages = [];
  if ($("system").value.trim()) messages.push({ role: "system", content: $("system").value });
  const content = [];
  if (state.image) content.push({ type: "image_url", image_url: { url: state.image } });
  content.push({ type: "text", text: $("question").value });
  messages.push({ role: "user", content });
  const body = {
    model: $("model-name").textContent, messages, stream: true, stream_options: { include_usage: true },
    max_tokens: Number($("max-tokens").value), temperature: Number($("temperature").value),
    top_p: Number($("top-p").value), template: $("template").value,
  };
  if ($("prefix").value) body.prefix = $("prefix").value;
  if ($("input").value.trim()) body.input = $("input").value;
  return body;
}

function handleEvent(data, answer) {
  const event = JSON.parse(data);
  if (event.error) throw new Error(event.error.message);
  if (event.usage) {
    $("status").textContent = `${event.usage.prompt_tokens} prompt tokens, ` +
      `${event.usage.completion_tokens} generated`;
  }
  for (const choice of event.choices || []) {
    if (choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
  }
}

async function run() {
  const answer = $("answer");
  answer.textContent = "";
  answer.classList.remove("error");
  $("status").textContent = "generating...";
  $("run").disabled = true;
  $("stop").disabled = false;
  state.controller = new AbortController();
  const headers = { "Content-Type": "application/json" };
  if (state.auth) headers.Authorization = "Bearer " + $("api-key").value;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers, body: JSON.stringify(buildRequest()), signal: state.controller.signal });
    if (!response.ok) {
      const failure = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(failure.error.message);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        if (line !== "[DONE]") handleEvent(line, answer);
      }
    }
    answer.dataset.done = "true";
  } catch (err) {
    if (err.name !== "AbortError") {
      answer.classList.add("error");
      answer.textContent = err.message;
      $("status").textContent = "";
    } else {
      $("status").textContent = "stopped";
    }
  } finally {
    $("run").disabled = false;
    $("stop").disabled = true;
  }
}

function init() {
  ["max-tokens", "temperature", "top-p"].forEach(bindSlider);
  $("image-file").addEventListener("change", (e) => e.target.files[0] && readFile(e.target.files[0]));
  $("clear-image").addEventListener("click", () => { setImage(null); $("image-file").value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) readFile(e.dataTransfer.files[0]);
  });
  $("run").addEventListener("click", () => { delete $("answer").dataset.done; run(); });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  loadConfig().catch((err) => { $("status").textContent = "cannot load the server config: " + err.message; });
}

init();
