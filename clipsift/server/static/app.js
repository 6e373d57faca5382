// clipsift web page: plain JavaScript modules, no build step; talks to the /v1 API.
//
// Modules: api.js (fetch, API key, errors), ui.js (banner, status), search.js (the box, the
// URL, searches), results.js (grid, keyboard, preview), classify.js (the side panel).
// Views: the page has a <nav class="views"> in index.html; a new view adds its link there
// and its own module, started from start() below like the search view.
import { ApiError, getJson, getKey, onUnauthorized, setKey } from "./api.js";
import { wireClassify } from "./classify.js";
import { noIndex, startSearch, wireSearch } from "./search.js";
import { $, clearError, showError } from "./ui.js";

// ---- API key --------------------------------------------------------------------------
function showAuth(message) {
  $("auth").hidden = false;
  $("auth-message").textContent = message;
  $("auth-message").hidden = !message;
  $("auth-forget").hidden = !getKey();
  $("server-info").textContent = "API key needed";
  $("api-key").focus();
}

onUnauthorized((error, hadKey) => {
  if (hadKey) {
    setKey("");  // a refused key is not kept
    showAuth(`Wrong API key: the server refused it (401: ${error.message}). Enter the key ` +
             "given to clipsift serve.");
  } else {
    showAuth(`This server needs a key for every request (401: ${error.message}).`);
  }
});

function wireAuth() {
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      showAuth("Enter the key first.");
      return;
    }
    setKey(key);
    $("api-key").value = "";
    clearError();
    loadHealth();
  });
  $("auth-forget").addEventListener("click", () => {
    setKey("");
    $("key-button").hidden = true;
    showAuth("The key was removed from this tab.");
  });
  $("key-button").addEventListener("click", () => showAuth(""));
}

// ---- server info ----------------------------------------------------------------------
async function loadHealth() {
  let health;
  try {
    health = await getJson("v1/health");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      $("server-info").textContent = "offline";
      showError(err);
    }
    return;
  }
  $("auth").hidden = true;
  $("key-button").hidden = !getKey();
  const items = health.index ? `${health.index.items.toLocaleString()} images` : "no index";
  $("server-info").textContent = `${health.model} · ${items}`;
  if (health.index) startSearch();
  else noIndex();
}

function start() {
  $("error-close").addEventListener("click", clearError);
  wireAuth();
  wireSearch();
  wireClassify();
  loadHealth();
}

start();
