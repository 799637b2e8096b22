// The vitsam page: upload or pick an image, prompt SAM with points / a box / text, pick among the candidates,
// keep masks, "segment everything", download; with a ViT, the top-5 classes and the attention rollout.
// Every canvas has the image's own pixel size (CSS scales them together), so canvas pixels are image pixels.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  image: null,        // {image: id, width, height}
  history: [],        // prompt states: {points: [[x, y, label]], box, text, result, masks, iou, picked}
  drag: null,         // {x0, y0, x1, y1} while a box is drawn
  busy: false,
  lastRoundTripMs: null,
};
window.vitsam = state;  // read by the browser test

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text || "";
  el.className = kind || "";
}

async function api(path, options) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function current() {
  return state.history.length ? state.history[state.history.length - 1] : null;
}

// ---------------------------------------------------------------------------------------------- images

async function loadImage(request, label) {
  if (state.busy) return;
  state.busy = true;
  setStatus(state.info.kind === "sam" ? `encoding ${label} …` : `classifying ${label} …`, "busy");
  try {
    const started = performance.now();
    const answer = await api(request.path, request.options);
    const picture = new Image();
    picture.src = `/api/images/${answer.image}/image.png`;
    await picture.decode();
    state.image = answer;
    state.lastEncodeRoundTripMs = performance.now() - started;
    state.history = [];
    state.everythingCount = undefined;
    for (const id of ["image", "everything-layer", "mask", "prompts"]) {
      $(id).width = answer.width;
      $(id).height = answer.height;
    }
    $("image").getContext("2d").drawImage(picture, 0, 0);
    // Shown as large as the pane allows (small images scaled up, large ones down); the other layers follow.
    const pane = $("main");
    const scale = Math.min((pane.clientWidth - 40) / answer.width, (pane.clientHeight - 40) / answer.height);
    $("image").style.width = `${Math.max(1, Math.round(answer.width * scale))}px`;
    $("image").style.height = `${Math.max(1, Math.round(answer.height * scale))}px`;
    $("stage").style.display = "block";
    clear("everything-layer");
    redraw();
    if (state.info.kind === "vit") showClasses(answer);
    $("timing").textContent = `${state.info.kind === "sam" ? "encoder" : "classifier"} ${answer.encode_ms} ms ` +
      `(server), ${Math.round(performance.now() - started)} ms round trip`;
    setStatus(`${label}: ${answer.width} × ${answer.height}`);
    $("kept").textContent = "";
  } catch (error) {
    setStatus(error.message, "error");
  } finally {
    state.busy = false;
  }
}

function showClasses(answer) {
  $("classes").innerHTML = "";
  for (const c of answer.top) {
    const row = document.createElement("div");
    row.innerHTML = "<span></span><span></span>";
    row.children[0].textContent = c.name;
    row.children[1].textContent = (100 * c.p).toFixed(1) + " %";
    $("classes").appendChild(row);
  }
  const heat = new Image();
  heat.onload = () => $("mask").getContext("2d").drawImage(heat, 0, 0);
  heat.src = answer.rollout;
}

// ---------------------------------------------------------------------------------------------- prompts

async function prompt(points, box, text) {
  if (!state.image || state.busy) return;
  const previous = current();
  const body = {points, box, text: text || null};
  if (previous && previous.result) body.mask_input = {result: previous.result, index: previous.picked};
  state.busy = true;
  setStatus("decoding …", "busy");
  try {
    const started = performance.now();
    const answer = await api(`/api/images/${state.image.image}/predict`, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    // Only the mask shown now is awaited; the other candidates decode meanwhile (awaited when picked).
    const masks = answer.masks.map(maskImage);
    await masks[answer.best].decode();
    state.history.push({points, box, text, result: answer.result, masks, iou: answer.iou, picked: answer.best});
    redraw();
    state.lastRoundTripMs = performance.now() - started;
    state.lastDecoderMs = answer.decoder_ms;
    $("timing").textContent = `decoder ${answer.decoder_ms} ms (server), ` +
      `${Math.round(state.lastRoundTripMs)} ms from click to mask drawn`;
    setStatus("");
  } catch (error) {
    setStatus(error.message, "error");
  } finally {
    state.busy = false;
  }
}

function maskImage(url) {
  const picture = new Image();  // the mask in colour on transparent: drawn as is
  picture.src = url;
  return picture;
}

function clear(id) {
  const c = $(id);
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
}

function redraw() {
  const step = current();
  clear("mask");
  if (step && step.masks) $("mask").getContext("2d").drawImage(step.masks[step.picked], 0, 0);
  drawPrompts(step);
  const list = $("candidates");
  list.innerHTML = "";
  if (step && step.masks) {
    step.iou.forEach((iou, k) => {
      const b = document.createElement("button");
      b.className = "candidate" + (k === step.picked ? " picked" : "");
      b.textContent = `mask ${k + 1}: predicted IoU ${iou.toFixed(3)}`;
      b.onclick = async () => {
        await step.masks[k].decode();
        step.picked = k;
        redraw();
      };
      list.appendChild(b);
    });
  }
}

function drawPrompts(step) {
  clear("prompts");
  const ctx = $("prompts").getContext("2d");
  const scale = Math.max(state.image ? state.image.width : 1, 1) / 400;
  ctx.lineWidth = Math.max(2, 2 * scale);
  const box = state.drag || (step && step.box && {x0: step.box[0], y0: step.box[1], x1: step.box[2], y1: step.box[3]});
  if (box) {
    ctx.strokeStyle = "#00e676";
    ctx.strokeRect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0);
  }
  for (const [x, y, label] of (step ? step.points : [])) {
    ctx.beginPath();
    ctx.arc(x, y, Math.max(5, 5 * scale), 0, 2 * Math.PI);
    ctx.fillStyle = label === 1 ? "#00c853" : "#d50000";
    ctx.fill();
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
}

function imagePoint(event) {
  const canvas = $("prompts");
  const rect = canvas.getBoundingClientRect();
  return [(event.clientX - rect.left) * canvas.width / rect.width,
          (event.clientY - rect.top) * canvas.height / rect.height];
}

function promptsSoFar() {
  const step = current();
  return step ? {points: step.points.slice(), box: step.box, text: step.text} : {points: [], box: null, text: null};
}

function onMouseDown(event) {
  if (!state.image || event.button !== 0 || event.shiftKey) return;
  const [x, y] = imagePoint(event);
  state.drag = {x0: x, y0: y, x1: x, y1: y, moved: false};
}

function onMouseMove(event) {
  if (!state.drag) return;
  const [x, y] = imagePoint(event);
  state.drag.x1 = x;
  state.drag.y1 = y;
  state.drag.moved = state.drag.moved || Math.hypot(x - state.drag.x0, y - state.drag.y0) > 4;
  if (state.drag.moved) drawPrompts(current());
}

function onMouseUp(event) {
  if (!state.image) return;
  const drag = state.drag;
  state.drag = null;
  const p = promptsSoFar();
  if (drag && drag.moved) {
    const box = [Math.min(drag.x0, drag.x1), Math.min(drag.y0, drag.y1),
                 Math.max(drag.x0, drag.x1), Math.max(drag.y0, drag.y1)];
    prompt(p.points, box, p.text);
    return;
  }
  if (event.button !== 0 && event.button !== 2) return;
  const [x, y] = imagePoint(event);
  const label = event.button === 2 || event.shiftKey ? 0 : 1;
  prompt([...p.points, [x, y, label]], p.box, p.text);
}

// ---------------------------------------------------------------------------------------------- actions

async function everything() {
  if (!state.image || state.busy) return;
  state.busy = true;
  setStatus("segmenting everything (a grid of 32 × 32 point prompts) …", "busy");
  try {
    const answer = await api(`/api/images/${state.image.image}/everything`, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
    const overlay = new Image();
    overlay.src = answer.overlay;
    await overlay.decode();
    clear("everything-layer");
    $("everything-layer").getContext("2d").drawImage(overlay, 0, 0);
    state.everythingCount = answer.count;
    setStatus(`${answer.count} masks`);
    $("timing").textContent = `segment everything ${Math.round(answer.everything_ms)} ms (server)`;
  } catch (error) {
    setStatus(error.message, "error");
  } finally {
    state.busy = false;
  }
}

async function keep() {
  const step = current();
  if (!step || !step.result) return setStatus("no mask to keep: click the image first", "error");
  try {
    const answer = await api(`/api/images/${state.image.image}/keep`, {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({result: step.result, index: step.picked})});
    $("kept").textContent = `${answer.kept} mask(s) kept for the annotations`;
  } catch (error) {
    setStatus(error.message, "error");
  }
}

function download(url, name) {
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
}

async function reset() {
  state.history = [];
  redraw();
  clear("everything-layer");
  state.everythingCount = undefined;
  $("kept").textContent = "";
  if (state.image) await api(`/api/images/${state.image.image}/reset`, {method: "POST"}).catch(() => {});
}

async function start() {
  try {
    state.info = await api("/api/info");
  } catch (error) {
    return setStatus(`the server did not answer: ${error.message}`, "error");
  }
  $("source").textContent = `${state.info.kind.toUpperCase()} · ${state.info.source}`;
  $(state.info.kind === "sam" ? "sam-tools" : "vit-tools").hidden = false;
  $("text-row").hidden = !state.info.text;
  for (const name of state.info.examples) {
    const b = document.createElement("button");
    b.textContent = name;
    b.onclick = () => loadImage({path: `/api/examples/${name}`, options: {method: "POST"}}, name);
    $("examples").appendChild(b);
  }
  $("file").onchange = () => {
    const file = $("file").files[0];
    if (!file) return;
    if (file.size > state.info.max_upload_bytes) {
      return setStatus(`${file.name} is larger than the server's limit of ${state.info.max_upload_bytes} bytes`,
                       "error");
    }
    loadImage({path: `/api/images?name=${encodeURIComponent(file.name)}`,
               options: {method: "POST", body: file}}, file.name);
  };
  const layer = $("prompts");
  layer.addEventListener("mousedown", onMouseDown);
  layer.addEventListener("mousemove", onMouseMove);
  layer.addEventListener("mouseup", onMouseUp);
  layer.addEventListener("contextmenu", (event) => event.preventDefault());
  $("undo").onclick = () => { state.history.pop(); redraw(); };
  $("reset").onclick = reset;
  $("everything").onclick = everything;
  $("keep").onclick = keep;
  $("send-text").onclick = () => {
    const p = promptsSoFar();
    prompt(p.points, p.box, $("text").value);
  };
  $("download-mask").onclick = () => {
    const step = current();
    if (!step || !step.masks) return setStatus("no mask yet: click the image first", "error");
    download(`/api/images/${state.image.image}/results/${step.result}/${step.picked}.png`, "mask.png");
  };
  $("download-annotations").onclick = () => {
    if (!state.image) return;
    download(`/api/images/${state.image.image}/annotations.json`, "annotations.json");
  };
  setStatus("upload an image or pick an example");
}

start();
