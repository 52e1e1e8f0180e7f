// The overview: date range, comparison, filter chips, summary cards, trend chart and
// breakdown tables. Every control changes the URL; the page is redrawn from the URL.
import { ApiError, SigningIn, download, getJson, tenantPath } from "./api.js";
import { lineChart } from "./chart.js";
import { announce, errorBox, h } from "./dom.js";
import { LOWER_IS_BETTER, METRIC_LABELS, change, freshness, metricValue } from "./format.js";
import {
  BREAKDOWNS,
  CARD_METRICS,
  INTERVALS,
  PRESETS,
  dimensionLabel,
  isCustom,
  statsParams,
} from "./view.js";

let generation = 0;

function message(error) {
  if (error instanceof ApiError) return error.message;
  if (error && error.name === "TimeoutError") return "The server took too long to answer.";
  return "The server could not be reached.";
}

function loading(panel) {
  panel.setAttribute("aria-busy", "true");
  panel.replaceChildren(h("p", { class: "muted loading", text: "Loading\u2026" }));
}

function done(panel, ...children) {
  panel.removeAttribute("aria-busy");
  panel.replaceChildren(...children);
}

// Runs `load` for a panel, showing loading, the result, or the error with a retry.
async function fill(panel, current, load) {
  loading(panel);
  try {
    const content = await load();
    if (current !== generation) return;
    done(panel, ...[content].flat());
  } catch (error) {
    if (error instanceof SigningIn || current !== generation) return;
    done(panel, errorBox(`Could not load: ${message(error)}`, () => fill(panel, current, load)));
  }
}

function controls(view, go) {
  const custom = isCustom(view.range);
  const select = h(
    "select",
    { id: "range", name: "range" },
    PRESETS.map(([value, label]) => h("option", { value, selected: value === view.range, text: label })),
    h("option", { value: "custom", selected: custom, text: "Custom range\u2026" }),
  );
  const [from, to] = custom ? view.range.split(",") : ["", ""];
  const fromInput = h("input", { type: "date", id: "range-from", value: from, required: true });
  const toInput = h("input", { type: "date", id: "range-to", value: to, required: true });
  const customForm = h(
    "form",
    { class: "custom-range", id: "custom-range", hidden: !custom },
    h("label", { for: "range-from", text: "From" }),
    fromInput,
    h("label", { for: "range-to", text: "To" }),
    toInput,
    h("button", { type: "submit", text: "Apply" }),
  );
  customForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!fromInput.value || !toInput.value) return;
    const [a, b] = [fromInput.value, toInput.value].sort();
    go({ ...view, range: `${a},${b}` });
  });
  select.addEventListener("change", () => {
    if (select.value === "custom") {
      customForm.hidden = false;
      fromInput.focus();
    } else {
      go({ ...view, range: select.value });
    }
  });
  const compare = h("input", { type: "checkbox", id: "compare", checked: view.compare });
  compare.addEventListener("change", () => go({ ...view, compare: compare.checked }));
  return h(
    "section",
    { class: "controls", "aria-label": "Date range and comparison" },
    h("div", { class: "field" }, h("label", { for: "range", text: "Date range" }), select),
    customForm,
    h("div", { class: "field inline" }, compare, h("label", { for: "compare", text: "Compare with previous period" })),
    h("p", { class: "freshness muted", id: "freshness", role: "status" }),
  );
}

function chips(view, go) {
  if (!view.filters.length) return h("div", { class: "chips", id: "chips", hidden: true });
  return h(
    "div",
    { class: "chips", id: "chips", role: "list", "aria-label": "Filters" },
    view.filters.map((f) =>
      h(
        "span",
        { class: "chip", role: "listitem", dataset: { dimension: f.dimension } },
        `${dimensionLabel(f.dimension)} is ${f.value}`,
        h("button", {
          type: "button",
          class: "chip-remove",
          "aria-label": `Remove filter ${dimensionLabel(f.dimension)} is ${f.value}`,
          text: "\u00d7",
          onclick: () => go({ ...view, filters: view.filters.filter((x) => x !== f) }),
        }),
      ),
    ),
  );
}

// The comparison in words: a percentage only when both periods have a figure. A period
// without data gives "n/a"; a metric that was zero before and is not now is "new".
export function comparisonText(metric, summary) {
  const comparison = summary.comparison;
  const previousPeriodEmpty = !comparison.totals.events && !comparison.totals.sessions;
  const before = comparison.totals[metric];
  const now = summary.totals[metric];
  const delta = comparison.change[metric];
  if (previousPeriodEmpty) return { text: "n/a: no data in the previous period", delta: null };
  if (delta === null || delta === undefined) {
    if (before === 0 && now) return { text: "new vs previous period", delta: null };
    return { text: "n/a vs previous period", delta: null };
  }
  return { text: `${change(delta)} vs previous period`, delta };
}

function card(metric, summary) {
  const value = summary.totals[metric];
  const compared = summary.comparison ? comparisonText(metric, summary) : null;
  const delta = compared ? compared.delta : null;
  let tone = "flat";
  if (delta) tone = (delta > 0) !== LOWER_IS_BETTER.has(metric) ? "good" : "bad";
  return h(
    "div",
    { class: "card", dataset: { metric } },
    h("h3", { text: METRIC_LABELS[metric] }),
    h("p", { class: "value", dataset: { raw: value === null ? "" : String(value) }, text: metricValue(metric, value) }),
    compared
      ? h("p", {
          class: `change ${tone}`,
          dataset: { raw: delta === null ? "" : String(delta) },
          text: compared.text,
        })
      : null,
  );
}

async function loadSummary(view, cards) {
  const summary = await getJson(tenantPath(view.tenant, `/stats/summary?${statsParams(view)}`));
  const fresh = document.getElementById("freshness");
  if (fresh) fresh.textContent = freshness(summary.meta.fresh_until, summary.meta.timezone);
  cards.dataset.range = summary.meta.date_range.join(",");
  return CARD_METRICS.map((m) => card(m, summary));
}

async function loadChart(view) {
  const params = statsParams(view, { metrics: view.metric, interval: view.interval });
  const result = await getJson(tenantPath(view.tenant, `/stats/timeseries?${params}`));
  const key = `time:${view.interval}`;
  const rows = result.rows
    .map((row) => ({
      label: row.dimensions[key],
      value: row.metrics[view.metric],
      previous: row.comparison ? row.comparison[view.metric] : null,
    }))
    .sort((a, b) => (a.label < b.label ? -1 : a.label > b.label ? 1 : 0));
  if (!rows.length) return h("p", { class: "muted empty", text: "No data for this period." });
  const title = `${METRIC_LABELS[view.metric]} per ${view.interval}, ${result.meta.date_range.join(" to ")}`;
  return lineChart(rows, { metric: view.metric, interval: view.interval, title });
}

function breakdownTable(view, dimension, result, go) {
  if (!result.rows.length) return h("p", { class: "muted empty", text: "No data for this period." });
  const active = view.filters.find((f) => f.dimension === dimension);
  return h(
    "table",
    { class: "breakdown", dataset: { dimension } },
    h("caption", { class: "visually-hidden", text: `${dimensionLabel(dimension)} by users; choose one to filter` }),
    h(
      "thead",
      {},
      h("tr", {}, h("th", { scope: "col", text: dimensionLabel(dimension) }), h("th", { scope: "col", class: "num", text: "Users" }), h("th", { scope: "col", class: "num", text: "Pageviews" })),
    ),
    h(
      "tbody",
      {},
      result.rows.map((row) => {
        const value = row.dimensions[dimension];
        const filter = () => go({ ...view, filters: [...view.filters.filter((f) => f.dimension !== dimension), { dimension, value }] });
        return h(
          "tr",
          { class: active && active.value === value ? "active" : null, dataset: { value } },
          h("td", {}, h("button", { type: "button", class: "row-filter", title: `Filter by ${value}`, onclick: filter, text: value })),
          h("td", { class: "num", dataset: { raw: String(row.metrics.users ?? "") }, text: metricValue("users", row.metrics.users) }),
          h("td", { class: "num", dataset: { raw: String(row.metrics.pageviews ?? "") }, text: metricValue("pageviews", row.metrics.pageviews) }),
        );
      }),
    ),
  );
}

function csvButton(label, onclick) {
  return h("button", { type: "button", class: "csv link-button", "aria-label": label, text: "CSV", onclick });
}

async function saveCsv(button, path, filename) {
  button.disabled = true;
  try {
    await download(path, filename);
    announce(`Downloaded ${filename}`);
  } catch (error) {
    if (!(error instanceof SigningIn)) announce(`Download failed: ${message(error)}`);
  } finally {
    button.disabled = false;
  }
}

export function renderOverview(root, view, go) {
  generation += 1;
  const current = generation;
  const cards = h("div", { class: "cards", id: "cards", "aria-live": "polite" });
  const chart = h("div", { class: "chart-box", id: "chart" });
  const metricSelect = h(
    "select",
    { id: "metric" },
    CARD_METRICS.map((m) => h("option", { value: m, selected: m === view.metric, text: METRIC_LABELS[m] })),
  );
  metricSelect.addEventListener("change", () => go({ ...view, metric: metricSelect.value }));
  const intervals = h(
    "div",
    { class: "segmented", role: "group", "aria-label": "Bucket size" },
    INTERVALS.map((i) =>
      h("button", { type: "button", "aria-pressed": String(i === view.interval), dataset: { interval: i }, text: i, onclick: () => go({ ...view, interval: i }) }),
    ),
  );
  const tenant = view.tenant;
  const timeseriesCsv = csvButton("Download the trend as CSV", (event) =>
    saveCsv(
      event.currentTarget,
      tenantPath(tenant, `/stats/timeseries?${statsParams(view, { metrics: view.metric, interval: view.interval, format: "csv" })}`),
      `${tenant}-${view.metric}-per-${view.interval}.csv`,
    ),
  );
  const panels = BREAKDOWNS.map(([dimension, title]) => {
    const body = h("div", { class: "table-box", id: `breakdown-${dimension}` });
    const csv = csvButton(`Download ${title.toLowerCase()} as CSV`, (event) =>
      saveCsv(
        event.currentTarget,
        tenantPath(tenant, `/stats/breakdown?${statsParams(view, { dimension, metrics: "users,pageviews", limit: "1000", format: "csv" })}`),
        `${tenant}-${dimension}.csv`,
      ),
    );
    const panel = h("section", { class: "panel", "aria-labelledby": `title-${dimension}` }, h("header", {}, h("h2", { id: `title-${dimension}`, text: title }), csv), body);
    return { dimension, body, panel };
  });
  root.replaceChildren(
    h("h1", { class: "visually-hidden", text: "Overview" }),
    controls(view, go),
    chips(view, go),
    cards,
    h(
      "section",
      { class: "panel chart-panel", "aria-labelledby": "title-trend" },
      h("header", {}, h("h2", { id: "title-trend", text: "Trend" }), h("label", { for: "metric", class: "visually-hidden", text: "Metric" }), metricSelect, intervals, timeseriesCsv),
      chart,
    ),
    h("div", { class: "breakdowns" }, panels.map((p) => p.panel)),
  );
  fill(cards, current, () => loadSummary(view, cards));
  fill(chart, current, () => loadChart(view));
  for (const { dimension, body } of panels) {
    fill(body, current, async () => {
      const params = statsParams(view, { dimension, metrics: "users,pageviews", limit: "10" });
      const result = await getJson(tenantPath(tenant, `/stats/breakdown?${params}`));
      return breakdownTable(view, dimension, result, go);
    });
  }
}
