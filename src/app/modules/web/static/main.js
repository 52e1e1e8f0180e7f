// Entry point: finish or start sign-in, learn who the user is, then route by path.
import { SigningIn, completeSignIn, currentView, isCallback, signIn, signOut, token } from "./auth.js";
import { ApiError, getJson } from "./api.js";
import { errorBox, h } from "./dom.js";
import { renderImports } from "./imports.js";
import { renderOverview } from "./overview.js";
import { readView, viewQuery } from "./view.js";

let me = null;
let tenants = [];

function main() {
  return document.getElementById("main");
}

function fatal(text, retry) {
  main().replaceChildren(errorBox(text, retry));
}

function canImport(tenant) {
  // Roles belong to a tenant: admin of this one, or a platform operator.
  return me.is_operator || (me.tenant_roles?.[tenant] || []).includes("admin");
}

function navigate(path, view, { replace = false } = {}) {
  const url = `${path}?${viewQuery(view)}`;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  route();
}

function tenantSwitcher(view) {
  const box = document.getElementById("tenant-switch");
  if (tenants.length <= 1) {
    box.replaceChildren(h("span", { class: "tenant-name", text: view.tenant || "" }));
    return;
  }
  const select = h(
    "select",
    { id: "tenant", "aria-label": "Tenant" },
    tenants.map((t) => h("option", { value: t, selected: t === view.tenant, text: t })),
  );
  select.addEventListener("change", () => navigate(location.pathname, { ...view, tenant: select.value, filters: [] }));
  box.replaceChildren(h("label", { for: "tenant", class: "visually-hidden", text: "Tenant" }), select);
}

function route() {
  const view = readView();
  if (!view.tenant || !tenants.includes(view.tenant)) {
    if (!tenants.length) {
      main().replaceChildren(h("p", { class: "notice", text: "Your account has no tenant yet. Ask an operator to add you to one." }));
      return;
    }
    navigate(location.pathname === "/imports" ? "/imports" : "/", { ...view, tenant: tenants[0] }, { replace: true });
    return;
  }
  tenantSwitcher(view);
  const imports = document.getElementById("nav-imports");
  imports.hidden = !canImport(view.tenant);
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    const path = link.dataset.view === "imports" ? "/imports" : "/";
    link.href = `${path}?${viewQuery(view)}`;
    const here = path === location.pathname;
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const go = (next) => navigate("/", next);
  if (location.pathname === "/imports") {
    document.title = "Imports - Pulse";
    renderImports(main(), view, me);
  } else {
    document.title = "Overview - Pulse";
    renderOverview(main(), view, go);
  }
}

function signedOut() {
  main().replaceChildren(
    h("h1", { text: "Signed out" }),
    h("p", { text: "You have signed out of Pulse." }),
    h("button", { type: "button", id: "sign-in-again", text: "Sign in", onclick: () => signIn("/").catch(() => {}) }),
  );
}

async function boot() {
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-nav]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || !me) return;
    event.preventDefault();
    history.pushState(null, "", link.getAttribute("href"));
    route();
    main().focus();
  });
  window.addEventListener("popstate", () => me && route());
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  try {
    if (location.pathname === "/signed-out") return signedOut();
    if (isCallback()) await completeSignIn();
    if (!token()) return await signIn(currentView());
    me = await getJson("/api/v1/me");
    tenants = [...me.tenants];
    if (me.is_operator) {
      try {
        const page = await getJson("/api/v1/tenants?limit=500");
        tenants = [...new Set([...tenants, ...page.items.map((t) => t.id)])];
      } catch (error) {
        if (error instanceof SigningIn) return;
      }
    }
    document.getElementById("who").textContent = `${me.subject} (${[...(me.is_operator ? ["operator"] : []), ...me.roles].join(", ") || "no role"})`;
    document.getElementById("account").hidden = false;
    route();
  } catch (error) {
    if (error instanceof SigningIn) return;
    const text = error instanceof ApiError || error instanceof Error ? error.message : String(error);
    fatal(text, () => location.assign("/"));
  }
}

boot();
