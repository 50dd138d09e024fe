// okkhor serve: draw on the pad (pointer events: mouse, pen, touch), send it to POST /predict, show the answer.
"use strict";

const PEN_WIDTH = 14;        // canvas pixels; the page is 2x the competition's 236x137, so about 7 there
const AUTO_DELAY_MS = 350;   // after the last stroke ends, with "as I write" checked

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const statusLine = document.getElementById("status");
const fileInput = document.getElementById("file");
const auto = document.getElementById("auto");

let model = null;        // GET /model
let strokes = [];        // [[x, y], ...] per stroke, in canvas pixels
let current = null;      // the stroke being drawn
let upload = null;       // {file, image}: an uploaded image, shown under the strokes
let timer = null;
let asked = 0;           // request counter: an older answer arriving late is dropped

function say(text, error = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", error);
}

function redraw() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  if (upload) {
    const scale = Math.min(pad.width / upload.image.width, pad.height / upload.image.height);
    const w = upload.image.width * scale, h = upload.image.height * scale;
    ctx.drawImage(upload.image, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  }
  ctx.strokeStyle = "#111";
  ctx.fillStyle = "#111";
  ctx.lineWidth = PEN_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const points of strokes.concat(current ? [current] : [])) {
    if (points.length === 1) {
      ctx.beginPath();
      ctx.arc(points[0][0], points[0][1], PEN_WIDTH / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(points[0][0], points[0][1]);
    for (const [x, y] of points.slice(1)) ctx.lineTo(x, y);
    ctx.stroke();
  }
}

function at(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  current = [at(event)];
  clearTimeout(timer);
  redraw();
});
pad.addEventListener("pointermove", (event) => {
  if (!current) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of (events.length ? events : [event])) current.push(at(e));
  redraw();
});
function endStroke() {
  if (!current) return;
  strokes.push(current);
  current = null;
  redraw();
  if (auto.checked) {
    clearTimeout(timer);
    timer = setTimeout(recognise, AUTO_DELAY_MS);
  }
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  if (strokes.length) strokes.pop();
  else upload = null;
  redraw();
  if (strokes.length || upload) { if (auto.checked) recognise(); } else showAnswer(null);
}

function clearPad() {
  strokes = [];
  upload = null;
  fileInput.value = "";
  redraw();
  showAnswer(null);
  say("Write a grapheme.");
}

document.getElementById("undo").addEventListener("click", undo);
document.getElementById("clear").addEventListener("click", clearPad);
document.getElementById("recognise").addEventListener("click", recognise);
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "z") { event.preventDefault(); undo(); }
});

fileInput.addEventListener("change", () => {
  const file = fileInput.files[0];
  if (!file) return;
  const image = new Image();
  image.onload = () => {
    upload = {file, image};
    strokes = [];
    redraw();
    recognise();
  };
  image.onerror = () => send(file, file.name);   // the server says what is wrong with it
  image.src = URL.createObjectURL(file);
});

function recognise() {
  clearTimeout(timer);
  if (!strokes.length && !upload) { say("The pad is empty: write a grapheme first."); return; }
  if (!strokes.length) { send(upload.file, upload.file.name); return; }   // the file itself, as uploaded
  pad.toBlob((blob) => send(blob, "pad.png"), "image/png");
}

async function send(blob, name) {
  const mine = ++asked;
  const form = new FormData();
  form.append("files", blob, name);
  say("Recognising\u2026");
  const started = performance.now();
  try {
    const response = await fetch("/predict", {method: "POST", body: form});
    const body = await response.json();
    if (mine !== asked) return;
    if (!response.ok) { say(body.error || `HTTP ${response.status}`, true); showAnswer(null); return; }
    showAnswer(body.predictions[0]);
    say(`Answered in ${Math.round(performance.now() - started)} ms.`);
  } catch (error) {
    if (mine === asked) say(`No answer from the server (${error.message}).`, true);
  }
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showAnswer(answer) {
  const box = document.getElementById("answer");
  box.hidden = !answer;
  box.dataset.ready = answer ? "1" : "";
  if (!answer) return;
  document.getElementById("grapheme").textContent = answer.grapheme;
  const seen = document.getElementById("seen");
  seen.hidden = answer.seen_score === undefined;
  if (!seen.hidden) seen.textContent = `seen score ${answer.seen_score.toFixed(2)}`;
  const targets = document.getElementById("targets");
  targets.replaceChildren();
  for (const target of model.targets) {
    const part = answer[target.name];
    const column = element("div", "target");
    column.dataset.target = target.name;
    column.append(element("h2", "", target.name.replace(/_/g, " ")));
    column.append(element("div", "letter bn", part.text === "0" ? "\u2013" : part.text));
    const label = element("div", "label", `label ${part.label}`);
    label.dataset.label = part.label;
    column.append(label);
    const top = element("ol", "top");
    for (const [k, p] of part.top) {
      const row = element("li");
      const text = target.components[k];
      row.append(element("span", "text bn", text === "0" ? "\u2013" : text));
      const track = element("span", "track");
      const bar = element("span", "bar");
      bar.style.width = `${(100 * p).toFixed(1)}%`;
      track.append(bar);
      row.append(track, element("span", "p", p.toFixed(2)));
      row.title = `label ${k}: ${p.toFixed(4)}`;
      top.append(row);
    }
    column.append(top);
    targets.append(column);
  }
}

async function start() {
  redraw();
  try {
    const response = await fetch("/model");
    model = await response.json();
    const files = model.models.map((m) => m.file.split("/").pop()).join(", ");
    document.getElementById("model").textContent =
      `okkhor ${model.okkhor_version} \u00b7 ${files} \u00b7 ${model.targets.map((t) => `${t.name} (${t.classes})`)
        .join(", ")} \u00b7 TTA ${model.tta}`;
    say("Write a grapheme.");
  } catch (error) {
    say(`Cannot reach the server (${error.message}).`, true);
  }
}

start();
