// Sign-in: OpenID Connect authorization code flow with PKCE (RFC 7636).
// The access token lives only in this module's memory: never in localStorage or a
// readable cookie. Only the one-time PKCE verifier, the state and the view to come back
// to are kept in sessionStorage across the redirect to the issuer, and removed on return.

const PENDING_KEY = "pulse.signin";
const CALLBACK_PATH = "/auth/callback";

let config = null;
let accessToken = null;
let expiresAt = 0;
let signedInAt = 0;
let redirecting = false;

export class SigningIn extends Error {
  constructor() {
    super("Redirecting to sign-in");
    this.name = "SigningIn";
  }
}

function base64url(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString(size) {
  const bytes = new Uint8Array(size);
  crypto.getRandomValues(bytes);
  return base64url(bytes);
}

async function challengeFor(verifier) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

export async function loadConfig() {
  if (config) return config;
  const response = await fetch("/web/config", { headers: { Accept: "application/json" } });
  if (!response.ok) {
    let detail = "Sign-in is not available right now.";
    try {
      const problem = await response.json();
      if (problem.detail) detail = problem.detail;
    } catch (_) {
      // keep the generic message
    }
    throw new Error(detail);
  }
  config = await response.json();
  return config;
}

export function currentView() {
  return location.pathname + location.search;
}

// Leaves the page for the issuer and throws SigningIn (the caller should stop working).
// Single flight: panels that notice an expired token at the same moment start one
// redirect, so the saved state and verifier always belong to the request that is sent.
export async function signIn(returnTo = currentView(), prompt = null) {
  if (redirecting) throw new SigningIn();
  redirecting = true;
  let cfg;
  let challenge;
  const verifier = randomString(48);
  const state = randomString(24);
  try {
    cfg = await loadConfig();
    challenge = await challengeFor(verifier);
  } catch (error) {
    redirecting = false;
    throw error;
  }
  const safeReturn = returnTo.startsWith("/") && !returnTo.startsWith("//") ? returnTo : "/";
  sessionStorage.setItem(PENDING_KEY, JSON.stringify({ state, verifier, returnTo: safeReturn }));
  const params = new URLSearchParams({
    response_type: "code",
    client_id: cfg.client_id,
    redirect_uri: location.origin + CALLBACK_PATH,
    scope: cfg.scope,
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  });
  if (prompt) params.set("prompt", prompt);
  const separator = cfg.authorization_endpoint.includes("?") ? "&" : "?";
  location.assign(cfg.authorization_endpoint + separator + params.toString());
  throw new SigningIn();
}

export function isCallback() {
  return location.pathname === CALLBACK_PATH;
}

// On /auth/callback: trade the code for a token, then put the saved view back in the URL.
export async function completeSignIn() {
  const params = new URLSearchParams(location.search);
  const raw = sessionStorage.getItem(PENDING_KEY);
  sessionStorage.removeItem(PENDING_KEY);
  const pending = raw ? JSON.parse(raw) : null;
  if (params.get("error")) {
    throw new Error(`The identity provider refused the sign-in: ${params.get("error_description") || params.get("error")}`);
  }
  if (!pending || !params.get("state") || params.get("state") !== pending.state) {
    throw new Error("This sign-in link is stale or was not started here. Please sign in again.");
  }
  const cfg = await loadConfig();
  const body = new URLSearchParams({
    grant_type: "authorization_code",
    code: params.get("code") || "",
    redirect_uri: location.origin + CALLBACK_PATH,
    client_id: cfg.client_id,
    code_verifier: pending.verifier,
  });
  const response = await fetch(cfg.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
    body,
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok || !answer.access_token) {
    throw new Error(`Sign-in failed: ${answer.error_description || answer.error || response.status}`);
  }
  accessToken = answer.access_token;
  const lifetime = Number(answer.expires_in) || 300;
  expiresAt = Date.now() + lifetime * 1000;
  signedInAt = Date.now();
  history.replaceState(null, "", pending.returnTo || "/");
}

export function token() {
  if (!accessToken || Date.now() >= expiresAt) return null;
  return accessToken;
}

// True right after a sign-in: a 401 then means Pulse refuses the issuer's tokens
// (audience or claims), and another round trip would only loop.
export function justSignedIn() {
  return signedInAt > 0 && Date.now() - signedInAt < 15000;
}

export function forgetToken() {
  accessToken = null;
  expiresAt = 0;
}

export async function signOut() {
  forgetToken();
  let cfg = null;
  try {
    cfg = await loadConfig();
  } catch (_) {
    cfg = null;
  }
  const back = location.origin + "/signed-out";
  if (cfg && cfg.end_session_endpoint) {
    const params = new URLSearchParams({ post_logout_redirect_uri: back, client_id: cfg.client_id });
    const separator = cfg.end_session_endpoint.includes("?") ? "&" : "?";
    location.assign(cfg.end_session_endpoint + separator + params.toString());
  } else {
    location.assign(back);
  }
}
