// The result grid: cards with readable captions, keyboard navigation, the preview dialog.
import { showImage, thumbUrl } from "./api.js";
import { $, setStatus } from "./ui.js";

const grid = () => $("results");
const view = {
  hits: [],
  owned: [],         // blob: URLs of the current result set, revoked on the next
  current: -1,       // the result shown in the preview
  refocus: false,    // focus the first result of the next set (after a keyboard action)
  actions: { moreLike: () => {}, classify: () => {} },
};

/** What a result's keys and buttons do: {moreLike(hit), classify(hit)}. */
export function setActions(actions) {
  view.actions = actions;
}

/** A file name as text nodes with line-break opportunities after "_", "-", spaces and dots
 * other than the extension's, so a caption wraps between the words of a name
 * ("n01440764_" | "tench.JPEG"), not inside one. */
export function nameNodes(name) {
  const nodes = [];
  name.split(/(?<=[_\- ]|\.(?=[^.]*\.))/).forEach((part, i) => {
    if (i) nodes.push(document.createElement("wbr"));
    nodes.push(document.createTextNode(part));
  });
  return nodes;
}

function caption(hit) {
  const name = document.createElement("span");
  name.className = "name";
  name.append(...nameNodes(hit.name));
  name.title = hit.path && hit.path !== hit.name ? `${hit.name}\n${hit.path}` : hit.name;
  return name;
}

function card(hit, i, tpl) {
  const el = tpl.content.firstElementChild.cloneNode(true);
  el.dataset.index = String(i);
  const img = el.querySelector("img");
  img.alt = hit.name;
  img.addEventListener("error", () => img.classList.add("broken"));
  showImage(img, thumbUrl(hit, 384), view.owned);
  el.querySelector(".name").replaceWith(caption(hit));
  el.querySelector(".score").textContent = hit.score.toFixed(3);
  el.style.animationDelay = `${Math.min(i, 20) * 18}ms`;
  el.querySelector(".thumb").setAttribute("aria-label", `${hit.name}: more like this`);
  el.querySelector(".thumb").addEventListener("click", () => view.actions.moreLike(hit));
  el.querySelector(".open").addEventListener("click", () => openPreview(i));
  el.querySelector(".use-classify").addEventListener("click", () => view.actions.classify(hit));
  return el;
}

/** Replace the grid with `hits`; `what` says what they answer ("for “cat”"). */
export function renderHits(hits, tookMs, what) {
  view.owned.forEach((u) => URL.revokeObjectURL(u));
  view.owned = [];
  view.hits = hits;
  if ($("preview").open) $("preview").close();
  $("empty").hidden = true;
  const plural = hits.length === 1 ? "result" : "results";
  setStatus(`${hits.length} ${plural} ${what} · ${Math.round(tookMs)} ms`);
  const tpl = $("card-template");
  grid().replaceChildren(...hits.map((hit, i) => card(hit, i, tpl)));
  if (!hits.length) {
    const p = document.createElement("p");
    p.className = "muted nothing";
    p.textContent = "Nothing matched. Try other words, or lower the threshold.";
    grid().appendChild(p);
  }
  if (view.refocus && hits.length) focusResult(0);
  view.refocus = false;
}

/** Empty the grid and show the example searches again. */
export function clearHits() {
  renderHits([], 0, "");
  grid().replaceChildren();
  setStatus("");
  $("empty").hidden = false;
}

// ---- keyboard -------------------------------------------------------------------------
function columns() {
  const cards = grid().querySelectorAll(".result");
  if (!cards.length) return 1;
  const top = cards[0].offsetTop;
  let n = 0;
  while (n < cards.length && cards[n].offsetTop === top) n += 1;
  return Math.max(1, n);
}

/** Focus result `i` (clamped); true when there is one. */
export function focusResult(i) {
  const cards = grid().querySelectorAll(".result");
  if (!cards.length) return false;
  const target = cards[Math.max(0, Math.min(cards.length - 1, i))];
  target.querySelector(".thumb").focus();
  target.scrollIntoView({ block: "nearest" });
  return true;
}

const GRID_KEYS = {
  ArrowRight: (i) => focusResult(i + 1),
  ArrowLeft: (i) => focusResult(i - 1),
  ArrowDown: (i) => focusResult(i + columns()),
  ArrowUp: (i) => (i - columns() < 0 ? $("query").focus() : focusResult(i - columns())),
  Home: () => focusResult(0),
  End: () => focusResult(view.hits.length - 1),
  Enter: (i) => openPreview(i),
  m: (i) => keyboardMoreLike(view.hits[i]),
  c: (i) => view.actions.classify(view.hits[i]),
};

function keyboardMoreLike(hit) {
  view.refocus = true;  // keep the keyboard user in the results
  view.actions.moreLike(hit);
}

function onGridKey(e) {
  const el = e.target.closest(".result");
  const action = GRID_KEYS[e.key];
  if (!el || !action || e.altKey || e.ctrlKey || e.metaKey) return;
  e.preventDefault();
  action(Number(el.dataset.index));
}

// ---- preview --------------------------------------------------------------------------
/** Show result `i` large in the preview dialog (Escape closes it). */
export function openPreview(i) {
  if (i < 0 || i >= view.hits.length) return;
  const hit = view.hits[i];
  view.current = i;
  $("preview-name").textContent = hit.name;
  $("preview-path").textContent = hit.path || "";
  $("preview-path").hidden = !hit.path;
  $("preview-score").textContent = hit.score.toFixed(3);
  const img = $("preview-img");
  img.alt = hit.name;
  img.removeAttribute("src");
  showImage(img, thumbUrl(hit, 1024), view.owned);
  const dialog = $("preview");
  if (!dialog.open) dialog.showModal();
  $("preview-more").focus();
}

function fromPreview(action) {
  const hit = view.hits[view.current];
  $("preview").close();
  action(hit);
}

const PREVIEW_KEYS = {
  ArrowRight: () => openPreview(Math.min(view.current + 1, view.hits.length - 1)),
  ArrowLeft: () => openPreview(Math.max(view.current - 1, 0)),
  m: () => fromPreview(keyboardMoreLike),
  c: () => fromPreview(view.actions.classify),
};

function wirePreview() {
  const dialog = $("preview");
  dialog.addEventListener("keydown", (e) => {
    const action = PREVIEW_KEYS[e.key];
    if (!action || e.altKey || e.ctrlKey || e.metaKey) return;
    e.preventDefault();
    action();
  });
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
  dialog.addEventListener("close", () => {
    const el = grid().querySelector(`.result[data-index="${view.current}"] .thumb`);
    if (el && document.activeElement === document.body) el.focus();
  });
  $("preview-close").addEventListener("click", () => dialog.close());
  $("preview-more").addEventListener("click", () => fromPreview(view.actions.moreLike));
  $("preview-classify").addEventListener("click", () => fromPreview(view.actions.classify));
}

export function wireResults() {
  grid().addEventListener("keydown", onGridKey);
  wirePreview();
}
