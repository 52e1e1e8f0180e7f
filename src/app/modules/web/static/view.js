// The view lives in the URL, so any view can be bookmarked, shared and restored after
// a sign-in round trip: /?tenant=acme&range=30d&compare=1&metric=users&interval=day&f=country:DE

export const PRESETS = [
  ["today", "Today"],
  ["yesterday", "Yesterday"],
  ["7d", "Last 7 days"],
  ["28d", "Last 28 days"],
  ["30d", "Last 30 days"],
  ["90d", "Last 90 days"],
  ["month", "This month"],
  ["last_month", "Last month"],
  ["12mo", "Last 12 months"],
  ["year", "This year"],
  ["all", "All time"],
];
export const INTERVALS = ["hour", "day", "week", "month"];
export const CARD_METRICS = ["users", "sessions", "pageviews", "bounce_rate", "avg_session_duration", "conversions", "revenue"];
export const BREAKDOWNS = [
  ["page_path", "Pages", "Page"],
  ["source", "Sources", "Source"],
  ["country", "Countries", "Country"],
  ["device_category", "Devices", "Device"],
];
const DIMENSIONS = new Set(BREAKDOWNS.map(([d]) => d));
const CUSTOM = /^\d{4}-\d{2}-\d{2},\d{4}-\d{2}-\d{2}$/;

export function readView(search = location.search) {
  const q = new URLSearchParams(search);
  const range = q.get("range") || "30d";
  const metric = q.get("metric");
  const interval = q.get("interval");
  return {
    tenant: q.get("tenant"),
    range: PRESETS.some(([p]) => p === range) || CUSTOM.test(range) ? range : "30d",
    compare: q.get("compare") !== "0",
    metric: CARD_METRICS.includes(metric) ? metric : "users",
    interval: INTERVALS.includes(interval) ? interval : "day",
    filters: q
      .getAll("f")
      .map((raw) => {
        const at = raw.indexOf(":");
        return at > 0 ? { dimension: raw.slice(0, at), value: raw.slice(at + 1) } : null;
      })
      .filter((f) => f && DIMENSIONS.has(f.dimension)),
  };
}

export function viewQuery(view) {
  const q = new URLSearchParams();
  if (view.tenant) q.set("tenant", view.tenant);
  q.set("range", view.range);
  q.set("compare", view.compare ? "1" : "0");
  q.set("metric", view.metric);
  q.set("interval", view.interval);
  for (const f of view.filters) q.append("f", `${f.dimension}:${f.value}`);
  return q.toString();
}

export function isCustom(range) {
  return CUSTOM.test(range);
}

export function apiFilters(view) {
  return JSON.stringify(view.filters.map((f) => ["is", f.dimension, [f.value]]));
}

export function statsParams(view, extra = {}) {
  const q = new URLSearchParams({ date_range: view.range, ...extra });
  if (view.compare) q.set("compare", "previous_period");
  if (view.filters.length) q.set("filters", apiFilters(view));
  return q.toString();
}

export function dimensionLabel(dimension) {
  const found = BREAKDOWNS.find(([d]) => d === dimension);
  return found ? found[2] : dimension;
}
