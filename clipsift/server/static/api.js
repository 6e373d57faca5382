// The /v1 API as the page uses it: one fetch wrapper, the API key, typed errors.
// Every view (search, and later others) talks to the server through this module.

const KEY_STORAGE = "clipsift-key";   // sessionStorage: this tab only
const KEY_HEADER = "X-API-Key";       // clipsift/server/security.py API_KEY_HEADER

let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
const unauthorizedHandlers = [];

export class ApiError extends Error {
  constructor(status, detail, code) {
    super(detail);
    this.status = status;
    this.code = code || "";
  }
}

/** The key kept for this tab ("" when none). */
export function getKey() {
  return apiKey;
}

/** Keep `key` for this tab (or forget it with ""). */
export function setKey(key) {
  apiKey = (key || "").trim();
  if (apiKey) sessionStorage.setItem(KEY_STORAGE, apiKey);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** Call `handler(error, hadKey)` whenever the server answers 401. */
export function onUnauthorized(handler) {
  unauthorizedHandlers.push(handler);
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (apiKey) h[KEY_HEADER] = apiKey;
  return h;
}

/** fetch() with the key; resolves to the Response when it is ok, else throws ApiError. */
export async function api(path, options) {
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
  const error = new ApiError(resp.status, detail, code);
  if (resp.status === 401) {
    const hadKey = Boolean(apiKey);
    unauthorizedHandlers.forEach((handler) => handler(error, hadKey));
  }
  throw error;
}

export async function getJson(path) {
  return (await api(path)).json();
}

export async function postJson(path, body) {
  const resp = await api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return resp.json();
}

export async function postForm(path, form) {
  return (await api(path, { method: "POST", body: form })).json();
}

/** The URL of an item's thumbnail at `size` pixels, relative to the page. */
export function thumbUrl(hit, size) {
  return `${hit.thumbnail.replace(/^\//, "")}?size=${size}`;
}

/** Show a server image in `img`. With an API key <img src> cannot send the header, so the
 * bytes are fetched and shown from a blob: URL, registered in `owned` to be revoked. */
export async function showImage(img, url, owned) {
  if (!apiKey) {
    img.src = url;
    return;
  }
  try {
    const blob = await (await api(url)).blob();
    const obj = URL.createObjectURL(blob);
    if (owned) owned.push(obj);
    img.src = obj;
  } catch (err) {
    img.classList.add("broken");
  }
}
