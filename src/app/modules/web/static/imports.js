// Imports (admins): sources with schedule, last run and status; recent runs with live
// progress (server-sent events, polling when the stream is unavailable); "Run now".
import { ApiError, SigningIn, getJson, postJson, streamEvents, tenantPath } from "./api.js";
import { announce, errorBox, h } from "./dom.js";
import { browserZone, count, dateTime, duration } from "./format.js";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 1000;
const watching = new Map();
let generation = 0;

const ERROR_WORDS = {
  LeaseExpired: "The import stopped responding (the worker was lost) and was given up.",
  TerminalError: "The source refused the import; retrying will not help until its settings are fixed.",
  TransientError: "A temporary problem reaching the source; the import was retried and then gave up.",
  TimeoutError: "The source took too long to answer.",
  Cancelled: "The import was cancelled.",
};

export function plainError(error) {
  if (!error || (!error.error_class && !error.message)) return "";
  const words = ERROR_WORDS[error.error_class] || "The import failed.";
  return error.message ? `${words} Details: ${error.message}` : words;
}

function schedule(source) {
  const s = source.schedule;
  if (!s) return "Manual only";
  if (s.cron) return `Cron ${s.cron}`;
  if (s.interval_s) return `Every ${duration(s.interval_s)}`;
  return "Manual only";
}

function badge(status) {
  return h("span", { class: `badge status-${status}`, text: status });
}

// rows_rejected counts every bad row; rows_quarantined is the part of them kept for
// review (at most PULSE_INGEST_QUARANTINE_CAP per run), never a second set of rows.
export function progressText(run) {
  const p = run.progress;
  const n = (value) => value.toLocaleString("en-US");
  const parts = [`${count(p.rows_read, "row")} read`, `${n(p.rows_loaded)} new`];
  if (p.rows_duplicate) parts.push(count(p.rows_duplicate, "duplicate"));
  if (p.rows_rejected) {
    const kept = p.rows_quarantined < p.rows_rejected ? ` (${n(p.rows_quarantined)} kept for review)` : "";
    parts.push(`${n(p.rows_rejected)} rejected${kept}`);
  }
  if (!FINAL.has(run.status) && p.stage) parts.push(p.stage);
  return parts.join(", ");
}

function runRow(run, names) {
  const error = plainError(run.error);
  return h(
    "tr",
    { id: `run-${run.id}`, dataset: { status: run.status, runId: run.id } },
    h("td", { text: names.get(run.source_id) || "(deleted source)" }),
    h("td", { text: run.trigger }),
    h("td", {}, badge(run.status)),
    h("td", { class: "progress", text: progressText(run) }),
    h("td", { text: dateTime(run.started_at || run.created_at) }),
    h("td", { class: "run-error", text: run.status === "failed" || error ? error : "" }),
  );
}

function sourcesTable(sources, runNow) {
  if (!sources.length) {
    return h("p", { class: "muted empty", text: "No sources yet. Create one with the API (POST /api/v1/tenants/{tenant}/sources)." });
  }
  return h(
    "table",
    { class: "sources" },
    h("thead", {}, h("tr", {}, ["Source", "Kind", "Schedule", `Last run (${browserZone()})`, "Status", ""].map((t) => h("th", { scope: "col", text: t })))),
    h(
      "tbody",
      {},
      sources.map((source) => {
        const last = source.last_run;
        return h(
          "tr",
          { dataset: { sourceId: source.id } },
          h("td", { text: source.name }),
          h("td", { text: source.kind }),
          h("td", { text: schedule(source) }),
          h("td", { text: last ? dateTime(last.at) : "Never" }),
          h("td", {}, source.enabled ? (last ? badge(last.status) : h("span", { class: "muted", text: "waiting" })) : badge("disabled")),
          h("td", {}, h("button", { type: "button", class: "run-now", dataset: { sourceId: source.id }, "aria-label": `Run ${source.name} now`, text: "Run now", onclick: (e) => runNow(source, e.currentTarget) })),
        );
      }),
    ),
  );
}

function runsTable(runs, names) {
  if (!runs.length) return h("p", { class: "muted empty", text: "No runs yet." });
  return h(
    "table",
    { class: "runs" },
    h("thead", {}, h("tr", {}, ["Source", "Trigger", "Status", "Progress", `Started (${browserZone()})`, "Problem"].map((t) => h("th", { scope: "col", text: t })))),
    h("tbody", { id: "runs-body" }, runs.map((run) => runRow(run, names))),
  );
}

function message(error) {
  return error instanceof ApiError ? error.message : "The server could not be reached.";
}

export function renderImports(root, view, me) {
  generation += 1;
  const current = generation;
  for (const stop of watching.values()) stop();
  watching.clear();
  const isAdmin = me.is_operator || (me.tenant_roles?.[view.tenant] || []).includes("admin");
  if (!isAdmin) {
    root.replaceChildren(
      h("h1", { text: "Imports" }),
      h("p", { class: "notice", role: "status", text: "Imports are managed by the tenant's admins. Ask one of them if data looks out of date." }),
    );
    return;
  }
  const tenant = view.tenant;
  const sourcesBox = h("div", { class: "table-box", id: "sources", "aria-busy": "true" }, h("p", { class: "muted loading", text: "Loading\u2026" }));
  const runsBox = h("div", { class: "table-box", id: "runs", "aria-busy": "true" }, h("p", { class: "muted loading", text: "Loading\u2026" }));
  root.replaceChildren(
    h("h1", { text: "Imports" }),
    h("p", { class: "muted", id: "imports-zone", text: `Times are in your browser's timezone, ${browserZone()}.` }),
    h("section", { class: "panel", "aria-labelledby": "title-sources" }, h("header", {}, h("h2", { id: "title-sources", text: "Sources" })), sourcesBox),
    h("section", { class: "panel", "aria-labelledby": "title-runs" }, h("header", {}, h("h2", { id: "title-runs", text: "Recent runs" })), runsBox),
  );
  let names = new Map();

  function showRun(run) {
    const body = document.getElementById("runs-body");
    if (!body) return refresh();
    const row = runRow(run, names);
    const existing = document.getElementById(`run-${run.id}`);
    if (existing) existing.replaceWith(row);
    else body.prepend(row);
  }

  function watch(run) {
    if (watching.has(run.id) || FINAL.has(run.status)) return;
    let stopped = false;
    watching.set(run.id, () => {
      stopped = true;
    });
    const finish = (latest) => {
      watching.delete(run.id);
      if (current !== generation) return;
      announce(`Import ${latest.status}: ${progressText(latest)}`);
      refresh();
    };
    const poll = async () => {
      while (!stopped && current === generation) {
        try {
          const latest = await getJson(tenantPath(tenant, `/runs/${run.id}`));
          showRun(latest);
          if (FINAL.has(latest.status)) return finish(latest);
        } catch (error) {
          if (error instanceof SigningIn) return;
        }
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    };
    (async () => {
      let latest = run;
      try {
        await streamEvents(tenantPath(tenant, `/runs/${run.id}/progress`), (event, data) => {
          if (stopped || current !== generation || event !== "run") return;
          latest = JSON.parse(data);
          showRun(latest);
        });
        if (FINAL.has(latest.status)) return finish(latest);
      } catch (error) {
        if (error instanceof SigningIn) return;
      }
      await poll();
    })();
  }

  async function runNow(source, button) {
    button.disabled = true;
    try {
      const run = await postJson(tenantPath(tenant, `/sources/${source.id}/runs`), { trigger: "manual" });
      announce(`Import of ${source.name} started`);
      showRun(run);
      watch(run);
    } catch (error) {
      if (!(error instanceof SigningIn)) announce(`Could not start the import: ${message(error)}`);
      if (!(error instanceof SigningIn)) button.after(errorBox(`Could not start: ${message(error)}`));
    } finally {
      button.disabled = false;
    }
  }

  async function refresh() {
    try {
      const [sources, runs] = await Promise.all([
        getJson(tenantPath(tenant, "/sources")),
        getJson(tenantPath(tenant, "/runs?limit=20")),
      ]);
      if (current !== generation) return;
      names = new Map(sources.items.map((s) => [s.id, s.name]));
      sourcesBox.removeAttribute("aria-busy");
      runsBox.removeAttribute("aria-busy");
      sourcesBox.replaceChildren(sourcesTable(sources.items, runNow));
      runsBox.replaceChildren(runsTable(runs.items, names));
      for (const run of runs.items) watch(run);
    } catch (error) {
      if (error instanceof SigningIn || current !== generation) return;
      sourcesBox.removeAttribute("aria-busy");
      runsBox.removeAttribute("aria-busy");
      sourcesBox.replaceChildren(errorBox(`Could not load the sources: ${message(error)}`, refresh));
      runsBox.replaceChildren();
    }
  }
  refresh();
}
