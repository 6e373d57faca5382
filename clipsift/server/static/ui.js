// Messages shared by the views: the error banner and the status line.
import { ApiError } from "./api.js";

export const $ = (id) => document.getElementById(id);

/** Show an error (an ApiError, an Error or a string) in the banner, in plain words. */
export function showError(err) {
  if (err instanceof ApiError && err.status === 401) return;  // the API-key card says it
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

export function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

export function setStatus(text) {
  $("status").textContent = text;
}

/** True when a key press is meant for a text field (not a page shortcut). */
export function typing(target) {
  const el = target || document.activeElement;
  if (!el) return false;
  return el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName);
}
