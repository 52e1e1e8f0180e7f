// Calls to Pulse's JSON API with the in-memory access token. A missing, expired or
// refused token sends the browser through sign-in and back to the same view.
import { SigningIn, currentView, forgetToken, justSignedIn, signIn, token } from "./auth.js";

export { SigningIn };

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
  }
}

const TIMEOUT_MS = 30000;

async function problemDetail(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || `HTTP ${response.status}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

export async function request(
  path,
  { method = "GET", body = null, accept = "application/json", signal = null, timeoutMs = TIMEOUT_MS } = {},
) {
  const bearer = token();
  if (!bearer) {
    await signIn(currentView());
    throw new SigningIn();
  }
  const headers = { Authorization: `Bearer ${bearer}`, Accept: accept };
  if (body !== null) headers["Content-Type"] = "application/json";
  const signals = [signal, timeoutMs ? AbortSignal.timeout(timeoutMs) : null].filter(Boolean);
  const response = await fetch(path, {
    method,
    headers,
    body: body === null ? null : JSON.stringify(body),
    signal: signals.length ? AbortSignal.any(signals) : null,
  });
  if (response.status === 401) {
    if (justSignedIn()) {
      const detail = await problemDetail(response);
      throw new ApiError(401, `Pulse does not accept the sign-in's token (${detail}). Check PULSE_OIDC_AUDIENCE and the tenant and role claims.`);
    }
    forgetToken();
    await signIn(currentView());
    throw new SigningIn();
  }
  if (!response.ok) throw new ApiError(response.status, await problemDetail(response));
  return response;
}

export async function getJson(path, options = {}) {
  const response = await request(path, options);
  return response.json();
}

export async function postJson(path, body) {
  const response = await request(path, { method: "POST", body });
  return response.json();
}

export function tenantPath(tenant, rest) {
  return `/api/v1/tenants/${encodeURIComponent(tenant)}${rest}`;
}

// Server-sent events over fetch (EventSource cannot send an Authorization header).
// The stream is dropped when nothing arrives for IDLE_MS; the caller falls back to polling.
const IDLE_MS = 30000;

export async function streamEvents(path, onEvent) {
  const idle = new AbortController();
  let timer = setTimeout(() => idle.abort(), IDLE_MS);
  const response = await request(path, { accept: "text/event-stream", signal: idle.signal, timeoutMs: 0 });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    clearTimeout(timer);
    if (done) return;
    timer = setTimeout(() => idle.abort(), IDLE_MS);
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, data.join("\n"));
    }
  }
}

// Saves a response as a file without leaving the page.
export async function download(path, filename) {
  const response = await request(path, { accept: "text/csv" });
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
