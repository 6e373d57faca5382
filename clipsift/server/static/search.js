// The search view: the query box, its URL (/?q=...) and history, searches by text, by an
// uploaded image and "more like this" (the query id:N), and the query pill.
import { getJson, postForm, postJson, showImage, thumbUrl } from "./api.js";
import { classifyHit, useForClassify } from "./classify.js";
import { clearHits, focusResult, renderHits, setActions, wireResults } from "./results.js";
import { $, clearError, setStatus, showError, typing } from "./ui.js";

const ITEM_QUERY = /^\s*id:(\d+)\s*$/;  // one indexed item: "more like this" (itself left out)
const DEFAULT_K = 24;
const state = { seq: 0, pillUrl: null, started: false };

function k() {
  return parseInt($("k").value, 10) || DEFAULT_K;
}

// ---- the URL follows the query --------------------------------------------------------
function urlFor(query) {
  const params = new URLSearchParams();
  if (query) params.set("q", query);
  if (query && k() !== DEFAULT_K) params.set("k", String(k()));
  const search = params.toString();
  return location.pathname + (search ? `?${search}` : "");
}

/** Record `query` in the address bar: "push" a history entry, "replace" it, or "none". */
function remember(query, mode) {
  if (mode === "none") return;
  const target = urlFor(query);
  if (mode === "push" && target !== location.pathname + location.search) {
    history.pushState({ q: query }, "", target);
  } else {
    history.replaceState({ q: query }, "", target);
  }
}

/** The query the URL asks for: ?q=... (and the older #q=...), with ?k=... */
function queryFromUrl() {
  const params = new URLSearchParams(location.search);
  const wanted = params.get("k");
  if (wanted && [...$("k").options].some((o) => o.value === wanted)) $("k").value = wanted;
  if (params.has("q")) return params.get("q");
  const legacy = location.hash.match(/^#q=(.+)$/);
  return legacy ? decodeURIComponent(legacy[1]) : "";
}

// ---- running searches -----------------------------------------------------------------
function busy(on) {
  document.body.classList.toggle("busy", on);
  $("search-button").disabled = on;
}

/** Run `request`; render its hits unless a newer search started. `label()` says what they
 * answer. Returns true when it succeeded (or was superseded). */
async function runSearch(label, request, onFail) {
  const seq = ++state.seq;
  clearError();
  busy(true);
  const t0 = performance.now();
  try {
    const data = await request();
    if (seq === state.seq) renderHits(data.hits, performance.now() - t0, label());
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

function setPill(text, image) {
  if (state.pillUrl) URL.revokeObjectURL(state.pillUrl);
  state.pillUrl = null;
  $("query-pill").hidden = !text;
  if (!text) return;
  $("query-pill-text").textContent = text;
  const img = $("query-pill-img");
  img.hidden = true;
  if (image instanceof Blob) {
    state.pillUrl = URL.createObjectURL(image);
    img.src = state.pillUrl;
    img.hidden = false;
  } else if (image) {
    const owned = [];
    showImage(img, thumbUrl(image, 96), owned).then(() => {
      state.pillUrl = owned[0] || null;
      img.hidden = false;
    });
  }
}

/** Search for `text`: words and the query language, or id:N for more like item N.
 * `mode` records it in the history ("push", "replace", "none"); `item` is the hit when
 * the search comes from a result (its name and thumbnail are known). */
export function search(text, mode = "push", item = null) {
  const query = (text || "").trim();
  if (!query) {
    showError("Type something to search for, or drop an image.");
    return Promise.resolve(false);
  }
  $("query").value = query;
  remember(query, mode);
  const id = query.match(ITEM_QUERY);
  if (id) return moreLikeId(Number(id[1]), item);
  setPill("");
  return runSearch(() => `for “${query}”`, () => postJson("v1/search/text", { query, k: k() }));
}

function moreLikeId(id, known) {
  let item = known;
  return runSearch(() => `like ${item.name}`, async () => {
    if (!item) item = await getJson(`v1/items/${id}`);
    setPill(`More like ${item.name}`, item);
    return postJson("v1/search/item", { id, k: k() });
  });
}

/** More like an indexed result: the box shows id:N and the URL ?q=id:N. */
function moreLike(hit) {
  window.scrollTo({ top: 0, behavior: "smooth" });
  return search(`id:${hit.id}`, "push", hit);
}

export function searchImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`“${file.name}” is not an image (${file.type}).`);
    return;
  }
  const name = file.name || "pasted image";
  setPill(`Images like ${name}`, file);
  $("query").value = "";
  remember("", "push");  // an uploaded image has no URL
  const form = new FormData();
  form.append("file", file, name);
  form.append("k", String(k()));
  runSearch(() => `like ${name}`, () => postForm("v1/search/image/upload", form),
            () => setPill(""))  // a bad upload: no pill, and keep it away from the classifier
    .then((ok) => { if (ok) useForClassify(file, name); });
}

// ---- drop and paste -------------------------------------------------------------------
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

// ---- wiring ---------------------------------------------------------------------------
function fromUrl(mode) {
  const query = queryFromUrl();
  if (query) {
    search(query, mode);
    return;
  }
  $("query").value = "";
  setPill("");
  clearHits();
}

function wireKeys() {
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && !typing(e.target) && !$("preview").open) {
      e.preventDefault();
      $("query").focus();
      $("query").select();
    }
  });
  $("query").addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown" && focusResult(0)) e.preventDefault();
  });
}

/** Wire the view once; search handlers are live before the server answers. */
export function wireSearch() {
  setActions({ moreLike, classify: classifyHit });
  wireResults();
  wireKeys();
  wireDragAndDrop();
  $("query-pill-img").addEventListener("error", (e) => { e.target.hidden = true; });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search($("query").value);
  });
  $("image-input").addEventListener("change", (e) => {
    searchImage(e.target.files[0]);
    e.target.value = "";
  });
  $("query-pill-clear").addEventListener("click", () => setPill(""));
  document.querySelectorAll(".chip[data-q]").forEach((b) => b.addEventListener("click", () => {
    search(b.dataset.q);
  }));
  window.addEventListener("popstate", () => { if (state.started) fromUrl("none"); });
}

/** Run the search the URL asks for (once the server answered), or focus the box. */
export function startSearch() {
  if (state.started) return;
  state.started = true;
  if (queryFromUrl()) fromUrl("replace");
  else $("query").focus();
}

/** This server has no index: say so, the box is off. */
export function noIndex() {
  $("search-section").classList.add("disabled");
  $("empty").hidden = true;
  setStatus("This server has no index: start it with `clipsift serve INDEX` to search. " +
            "Classification works.");
}
