// The sampler's web page: pick a class, set the knobs, watch the images decode step by step.
// Plain browser JavaScript, no build step. Talks to the same API as any client:
// GET v1/models (OpenAI's list) and v1/models/{id} (the details), POST v1/generate and v1/inpaint with "stream": true (server-sent events read from a
// fetch() body, since EventSource cannot POST). URLs are relative to <base href>, set by the server.

"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, mode: "generate", image: null, box: null, drag: null };
const KEY_ITEM = "maskgit-api-key"; // kept for this tab only (sessionStorage), sent as a bearer token

// ---- API keys: asked for when the server answers 401 ----------------------------------------------

function authHeaders(headers = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

function askForKey(message) {
  const form = $("key-form");
  form.hidden = false;
  setStatus(message, true);
  $("api-key").focus();
  return new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY_ITEM, $("api-key").value.trim());
      form.hidden = true;
      setStatus("");
      resolve();
    };
  });
}

// ---- server-sent events over fetch --------------------------------------------------------------

async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

// ---- the grid of results ------------------------------------------------------------------------

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

function makeCells(count) {
  const grid = $("grid");
  grid.replaceChildren();
  const cells = [];
  for (let i = 0; i < count; i++) {
    const figure = document.createElement("figure");
    const canvas = document.createElement("canvas");
    const caption = document.createElement("figcaption");
    caption.textContent = "waiting…";
    figure.append(canvas, caption);
    grid.append(figure);
    cells.push({ figure, canvas, caption });
  }
  return cells;
}

function tokenColour(token) {
  const hue = (token * 137.508) % 360; // golden angle: neighbouring codes get distinct hues
  return `hsl(${hue} 55% 55%)`;
}

// A step without a preview image: decided tokens in colour, undecided ones grey.
function drawTokens(canvas, tokens, masked) {
  const h = tokens.length;
  const w = tokens[0].length;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      ctx.fillStyle = masked[y][x] ? "#d0d4dc" : tokenColour(tokens[y][x]);
      ctx.fillRect(x, y, 1, 1);
    }
  }
}

function showStep(cells, step) {
  for (const image of step.images) {
    const cell = cells[image.index];
    if (!cell) continue;
    if (image.png) {
      showPng(cell, image.png, "step");
    } else {
      drawTokens(cell.canvas, image.tokens, image.masked);
    }
    const left = image.masked.flat().filter(Boolean).length;
    cell.caption.textContent = `step ${step.step}/${step.steps} · ${left} masked`;
  }
  setStatus(`decoding: step ${step.step} of ${step.steps}`);
  $("grid").dataset.steps = String(step.step);
}

function showPng(cell, png, kind) {
  let img = cell.figure.querySelector("img");
  if (!img) {
    img = document.createElement("img");
    img.alt = "generated image";
    img.title = "click to inpaint this image";
    img.addEventListener("click", () => useForInpainting(img.src));
    cell.canvas.replaceWith(img);
  }
  img.src = `data:image/png;base64,${png}`;
  img.className = kind;
}

function showResult(cells, result) {
  const names = state.model.class_names;
  for (const image of result.images) {
    const cell = cells[image.index];
    if (image.png) showPng(cell, image.png, "final");
    else drawTokens(cell.canvas, image.tokens, image.tokens.map((row) => row.map(() => false)));
    const name = names ? names[image.class_id] : `class ${image.class_id}`;
    cell.caption.textContent = `${name} · seed ${image.seed}`;
  }
  $("grid").dataset.done = "true";
  setStatus(`done: ${result.images.length} image(s), ${result.sampling.steps} steps, seed ${result.seed}`);
}

// ---- requests -----------------------------------------------------------------------------------

function knobs() {
  const body = {
    class_id: Number($("class").value),
    count: Number($("count").value),
    steps: Number($("steps").value),
    cfg_weight: Number($("cfg_weight").value),
    temperature: Number($("temperature").value),
    order: $("order").value,
    stream: true,
    previews: "images",
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

async function run(event) {
  event.preventDefault();
  const body = knobs();
  let route = "v1/generate";
  if (state.mode === "inpaint") {
    if (!state.image || !state.box) {
      setStatus("upload or pick an image and drag a box on it first", true);
      return;
    }
    route = "v1/inpaint";
    body.image = state.image.toDataURL("image/png");
    body.box = state.box;
  }
  $("run").disabled = true;
  $("grid").dataset.done = "false";
  setStatus("sending…");
  const cells = makeCells(body.count);
  try {
    const response = await fetch(route, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      const answer = await response.json();
      $("grid").replaceChildren(); // no "waiting…" cards for a request that was refused
      if (response.status === 401) askForKey(`${answer.error}: enter a key above, then run again`);
      else setStatus(answer.error || `HTTP ${response.status}`, true);
      return;
    }
    for await (const { event: name, data } of readEvents(response)) {
      if (name === "step") showStep(cells, data);
      else if (name === "result") showResult(cells, data);
      else if (name === "error") {
        $("grid").replaceChildren();
        setStatus(data.error, true);
      }
    }
  } catch (error) {
    $("grid").replaceChildren();
    setStatus(`request failed: ${error}`, true);
  } finally {
    $("run").disabled = false;
  }
}

// ---- inpainting: an image at the model's size and a box drawn on it -----------------------------

function drawCanvas() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (state.image) ctx.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  const box = state.drag || state.box;
  if (box) {
    const scale = canvas.width / state.model.image_size;
    ctx.strokeStyle = "#ff2f6d";
    ctx.lineWidth = 2;
    ctx.strokeRect(box.left * scale, box.top * scale, box.width * scale, box.height * scale);
  }
}

function setImage(source) {
  // Center crop and resize to the model's size, as the server expects.
  const size = state.model.image_size;
  const side = Math.min(source.width, source.height);
  const image = document.createElement("canvas");
  image.width = image.height = size;
  image.getContext("2d").drawImage(
    source, (source.width - side) / 2, (source.height - side) / 2, side, side, 0, 0, size, size,
  );
  state.image = image;
  state.box = null;
  drawCanvas();
}

function loadImage(url) {
  const img = new Image();
  img.onload = () => setImage(img);
  img.src = url;
}

function useForInpainting(url) {
  selectMode("inpaint");
  loadImage(url);
}

function pixelAt(event) {
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  const size = state.model.image_size;
  const clamp = (v) => Math.max(0, Math.min(size, v));
  return {
    x: clamp(Math.round(((event.clientX - rect.left) / rect.width) * size)),
    y: clamp(Math.round(((event.clientY - rect.top) / rect.height) * size)),
  };
}

function boxFrom(a, b) {
  const size = state.model.image_size;
  const top = Math.min(a.y, b.y, size - 1);
  const left = Math.min(a.x, b.x, size - 1);
  return {
    top, left,
    height: Math.max(1, Math.abs(b.y - a.y)),
    width: Math.max(1, Math.abs(b.x - a.x)),
  };
}

function wireCanvas() {
  const canvas = $("canvas");
  let start = null;
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.image) return;
    start = pixelAt(event);
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!start) return;
    state.drag = boxFrom(start, pixelAt(event));
    drawCanvas();
  });
  canvas.addEventListener("pointerup", (event) => {
    if (!start) return;
    state.box = boxFrom(start, pixelAt(event));
    state.drag = null;
    start = null;
    drawCanvas();
    setStatus(`box: top ${state.box.top}, left ${state.box.left}, ${state.box.height}×${state.box.width} px`);
  });
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (file) loadImage(URL.createObjectURL(file));
  });
}

// ---- start --------------------------------------------------------------------------------------

async function api(route) {
  for (;;) {
    const response = await fetch(route, { headers: authHeaders() });
    const answer = await response.json();
    if (response.status === 401) {
      await askForKey(`${answer.error}: enter a key above`);
      continue;
    }
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    return answer;
  }
}

function selectMode(mode) {
  state.mode = mode;
  $("tab-generate").setAttribute("aria-selected", String(mode === "generate"));
  $("tab-inpaint").setAttribute("aria-selected", String(mode === "inpaint"));
  $("inpaint").hidden = mode !== "inpaint";
  $("run").textContent = mode === "inpaint" ? "Inpaint" : "Generate";
}

async function start() {
  const listed = await api("v1/models");
  const model = await api(`v1/models/${encodeURIComponent(listed.data[0].id)}`);
  state.model = model;
  $("model").textContent = `${model.name} · ${model.image_size}×${model.image_size} px · ${model.num_classes} classes`;
  const select = $("class");
  for (let id = 0; id < model.num_classes; id++) {
    const option = document.createElement("option");
    option.value = String(id);
    option.textContent = model.class_names ? model.class_names[id] : `class ${id}`;
    select.append(option);
  }
  const defaults = model.sampling_defaults;
  $("steps").value = defaults.steps;
  $("steps").max = model.limits.max_steps;
  $("count").max = model.limits.max_images_per_request;
  $("count").value = Math.min(4, model.limits.max_images_per_request);
  $("cfg_weight").value = defaults.cfg_weight;
  $("temperature").value = defaults.temperature;
  $("order").value = defaults.order;
  $("tab-generate").addEventListener("click", () => selectMode("generate"));
  $("tab-inpaint").addEventListener("click", () => selectMode("inpaint"));
  $("controls").addEventListener("submit", run);
  wireCanvas();
  document.body.dataset.ready = "true";
}

start().catch((error) => setStatus(`could not load the model list: ${error}`, true));
