// clipsift search page: plain JavaScript, no build step. Talks to the /v1 API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem("clipsift-key") || "",
  health: null,
  classifyImage: null,     // Blob chosen for the classify panel
  objectUrls: [],          // blob: URLs of the current result set, revoked on the next
  seq: 0,                  // ignore responses of superseded searches
};

// ---- API ------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h["X-API-Key"] = state.key;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (err) {
    throw new ApiError(0, "Cannot reach the server. Is `clipsift serve` still running?");
  }
  if (resp.ok) return resp;
  let detail = resp.statusText || "request failed";
  let code = "";
  try {
    const body = await resp.json();
    detail = body.detail || detail;
    code = body.error || "";
  } catch (err) { /* not JSON */ }
  if (resp.status === 401) showAuth();
  const error = new ApiError(resp.status, detail);
  error.code = code;
  throw error;
}

async function postJson(path, body) {
  const resp = await api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return resp.json();
}

async function postForm(path, form) {
  const resp = await api(path, { method: "POST", body: form });
  return resp.json();
}

// ---- messages -------------------------------------------------------------------------
function showError(err) {
  let text = err && err.message ? err.message : String(err);
  if (err instanceof ApiError) {
    if (err.code === "invalid_query") text = "The query could not be read: " + text;
    else if (err.status === 422 || err.status === 413) text = "That image could not be used: " + text;
    else if (err.code === "unhealthy") text = "The server is not working: " + text;
    else if (err.status === 503 || err.status === 504) text = "The server is busy: " + text;
  }
  $("error-text").textContent = text;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

function setStatus(text) {
  $("status").textContent = text;
}

function showAuth() {
  $("auth").hidden = false;
  $("api-key").focus();
}

// ---- server info ----------------------------------------------------------------------
async function loadHealth() {
  try {
    const h = await (await api("v1/health")).json();
    state.health = h;
    $("auth").hidden = true;
    const items = h.index ? `${h.index.items.toLocaleString()} images` : "no index";
    $("server-info").textContent = `${h.model} · ${items}`;
    if (!h.index) {
      $("search-section").classList.add("disabled");
      $("empty").hidden = true;
      setStatus("This server has no index: start it with `clipsift serve INDEX` to search. " +
                "Classification works.");
    }
  } catch (err) {
    $("server-info").textContent = "offline";
    if (!(err instanceof ApiError && err.status === 401)) showError(err);
  }
}

// ---- results --------------------------------------------------------------------------
function thumbUrl(hit, size) {
  return `${hit.thumbnail.replace(/^\//, "")}?size=${size}`;
}

async function setThumb(img, url) {
  if (!state.key) {
    img.src = url;
    return;
  }
  try {  // with an API key, <img src> cannot send the header: fetch the bytes instead
    const blob = await (await api(url)).blob();
    const obj = URL.createObjectURL(blob);
    state.objectUrls.push(obj);
    img.src = obj;
  } catch (err) {
    img.classList.add("broken");
  }
}

function renderHits(hits, tookMs, what) {
  state.objectUrls.forEach((u) => URL.revokeObjectURL(u));
  state.objectUrls = [];
  const grid = $("results");
  grid.replaceChildren();
  $("empty").hidden = true;
  const plural = hits.length === 1 ? "result" : "results";
  setStatus(`${hits.length} ${plural} ${what} · ${Math.round(tookMs)} ms`);
  const tpl = $("card-template");
  hits.forEach((hit, i) => {
    const card = tpl.content.firstElementChild.cloneNode(true);
    const img = card.querySelector("img");
    img.alt = hit.name;
    img.addEventListener("error", () => img.classList.add("broken"));
    setThumb(img, thumbUrl(hit, 384));
    card.querySelector(".name").textContent = hit.name;
    card.querySelector(".name").title = hit.path || hit.name;
    card.querySelector(".score").textContent = hit.score.toFixed(3);
    card.style.animationDelay = `${Math.min(i, 20) * 18}ms`;
    card.querySelector(".thumb").addEventListener("click", () => moreLike(hit));
    card.querySelector(".use-classify").addEventListener("click", () => classifyHit(hit));
    grid.appendChild(card);
  });
  if (!hits.length) {
    const p = document.createElement("p");
    p.className = "muted nothing";
    p.textContent = "Nothing matched. Try other words, or lower the threshold.";
    grid.appendChild(p);
  }
}

function busy(on) {
  document.body.classList.toggle("busy", on);
  $("search-button").disabled = on;
}

async function runSearch(label, request, onFail) {
  const seq = ++state.seq;
  clearError();
  busy(true);
  const t0 = performance.now();
  try {
    const data = await request();
    if (seq !== state.seq) return true;
    renderHits(data.hits, performance.now() - t0, label);
    return true;
  } catch (err) {
    if (seq === state.seq) {
      showError(err);
      if (onFail) onFail();
    }
    return false;
  } finally {
    if (seq === state.seq) busy(false);
  }
}

function k() {
  return parseInt($("k").value, 10) || 24;
}

function setPill(text, imageUrl) {
  const pill = $("query-pill");
  if (!text) {
    pill.hidden = true;
    return;
  }
  $("query-pill-text").textContent = text;
  const img = $("query-pill-img");
  img.hidden = !imageUrl;
  if (imageUrl) img.src = imageUrl;
  pill.hidden = false;
}

function searchText(text) {
  const query = text.trim();
  if (!query) {
    showError("Type something to search for, or drop an image.");
    return;
  }
  setPill("");
  history.replaceState(null, "", `#q=${encodeURIComponent(query)}`);
  runSearch(`for “${query}”`, () => postJson("v1/search/text", { query, k: k() }));
}

function searchImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`“${file.name}” is not an image (${file.type}).`);
    return;
  }
  const name = file.name || "pasted image";
  const preview = URL.createObjectURL(file);
  setPill(`Images like ${name}`, preview);
  $("query").value = "";
  const form = new FormData();
  form.append("file", file, name);
  form.append("k", String(k()));
  const failed = () => {  // a bad upload: no pill, and keep it away from the classifier
    setPill("");
    URL.revokeObjectURL(preview);
  };
  runSearch(`like ${name}`, () => postForm("v1/search/image/upload", form), failed)
    .then((ok) => {
      if (!ok) return;
      useForClassify(file, name);  // the query image is ready to classify too
    });
}

function moreLike(hit) {
  setPill(`More like ${hit.name}`, null);
  const img = $("query-pill-img");
  setThumb(img, thumbUrl(hit, 96)).then(() => { img.hidden = false; });
  window.scrollTo({ top: 0, behavior: "smooth" });
  runSearch(`like ${hit.name}`, () => postJson("v1/search/item", { id: hit.id, k: k() }));
}

// ---- classify -------------------------------------------------------------------------
function useForClassify(blob, name) {
  state.classifyImage = blob;
  const img = $("classify-preview");
  img.src = URL.createObjectURL(blob);
  img.hidden = false;
  $("classify-source").textContent = name;
}

async function classifyHit(hit) {
  try {
    const blob = await (await api(thumbUrl(hit, 512))).blob();
    useForClassify(blob, hit.name);
    $("classify-details").open = true;
    $("classify-panel").scrollIntoView({ behavior: "smooth", block: "nearest" });
    await classify();
  } catch (err) {
    showError(err);
  }
}

function parseLabels() {
  const seen = new Set();
  return $("labels").value.split(/[,\n]/).map((s) => s.trim())
    .filter((s) => s && !seen.has(s) && seen.add(s));
}

async function classify() {
  clearError();
  const labels = parseLabels();
  if (!state.classifyImage) {
    showError("Choose an image to classify (or search by image first).");
    return;
  }
  if (!labels.length) {
    showError("Give at least one label, e.g. “cat, dog”.");
    return;
  }
  const form = new FormData();
  form.append("file", state.classifyImage, "image");
  labels.forEach((l) => form.append("labels", l));
  const mode = $("templates").value;
  if (mode === "photo") form.append("templates", "a photo of a {}.");
  if (mode === "simple" || mode === "imagenet80") form.append("template_set", mode);
  $("classify-button").disabled = true;
  try {
    const data = await postForm("v1/classify/upload", form);
    renderBars(data.labels);
  } catch (err) {
    showError(err);
  } finally {
    $("classify-button").disabled = false;
  }
}

function renderBars(labels) {
  const list = $("classify-results");
  list.replaceChildren();
  labels.forEach((l) => {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = l.label;
    const pct = document.createElement("span");
    pct.className = "bar-value";
    pct.textContent = `${(l.probability * 100).toFixed(1)}%`;
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(1, l.probability * 100)}%`;
    track.appendChild(fill);
    li.append(name, pct, track);
    list.appendChild(li);
  });
}

// ---- wiring ---------------------------------------------------------------------------
function imageFrom(dataTransfer) {
  if (!dataTransfer) return null;
  for (const item of dataTransfer.items || []) {
    if (item.kind === "file") return item.getAsFile();
  }
  return dataTransfer.files && dataTransfer.files[0] ? dataTransfer.files[0] : null;
}

function wireDragAndDrop() {
  let depth = 0;
  const overlay = $("drop-overlay");
  window.addEventListener("dragenter", (e) => {
    if (!e.dataTransfer || !Array.from(e.dataTransfer.types).includes("Files")) return;
    depth += 1;
    overlay.hidden = false;
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) overlay.hidden = true;
  });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    const file = imageFrom(e.dataTransfer);
    if (file) searchImage(file);
  });
  window.addEventListener("paste", (e) => {
    const file = imageFrom(e.clipboardData);
    if (file) {
      e.preventDefault();
      searchImage(file);
    }
  });
}

function wire() {
  for (const id of ["query-pill-img", "classify-preview"]) {  // never show a broken image
    $(id).addEventListener("error", (e) => { e.target.hidden = true; });
  }
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    searchText($("query").value);
  });
  $("image-input").addEventListener("change", (e) => {
    searchImage(e.target.files[0]);
    e.target.value = "";
  });
  $("classify-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) useForClassify(file, file.name);
    e.target.value = "";
  });
  $("classify-form").addEventListener("submit", (e) => {
    e.preventDefault();
    classify();
  });
  $("query-pill-clear").addEventListener("click", () => {
    setPill("");
  });
  $("error-close").addEventListener("click", clearError);
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("clipsift-key", state.key);
    loadHealth();
  });
  document.querySelectorAll(".chip[data-q]").forEach((b) => b.addEventListener("click", () => {
    $("query").value = b.dataset.q;
    searchText(b.dataset.q);
  }));
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement.tagName !== "INPUT"
        && document.activeElement.tagName !== "TEXTAREA") {
      e.preventDefault();
      $("query").focus();
    }
  });
  wireDragAndDrop();
}

async function start() {
  if (window.matchMedia("(max-width: 900px)").matches) $("classify-details").open = false;
  wire();
  await loadHealth();
  const m = location.hash.match(/^#q=(.+)$/);
  if (m && state.health && state.health.index) {
    const q = decodeURIComponent(m[1]);
    $("query").value = q;
    searchText(q);
  } else {
    $("query").focus();
  }
}

start();
