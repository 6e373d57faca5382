// The classify panel: an image (chosen, the query image or a result) against labels.
import { api, postForm, thumbUrl } from "./api.js";
import { $, clearError, showError } from "./ui.js";

let classifyImage = null;   // Blob to classify
let previewUrl = null;      // its blob: URL in the panel

/** Make `blob` the panel's image, shown with `name`. */
export function useForClassify(blob, name) {
  classifyImage = blob;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(blob);
  const img = $("classify-preview");
  img.src = previewUrl;
  img.hidden = false;
  $("classify-source").textContent = name;
}

/** Classify a search result (its 512-pixel thumbnail). */
export async function classifyHit(hit) {
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
  if (!classifyImage) {
    showError("Choose an image to classify (or search by image first).");
    return;
  }
  if (!labels.length) {
    showError("Give at least one label, e.g. “cat, dog”.");
    return;
  }
  const form = new FormData();
  form.append("file", classifyImage, "image");
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

export function wireClassify() {
  if (window.matchMedia("(max-width: 900px)").matches) $("classify-details").open = false;
  $("classify-preview").addEventListener("error", (e) => { e.target.hidden = true; });
  $("classify-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) useForClassify(file, file.name);
    e.target.value = "";
  });
  $("classify-form").addEventListener("submit", (e) => {
    e.preventDefault();
    classify();
  });
}
