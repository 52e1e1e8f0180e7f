// Number, duration and time formatting shared by the views.

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const percent = new Intl.NumberFormat("en-US", { style: "percent", maximumFractionDigits: 1 });

export const METRIC_LABELS = {
  users: "Users",
  sessions: "Sessions",
  pageviews: "Pageviews",
  bounce_rate: "Bounce rate",
  avg_session_duration: "Avg. session duration",
  conversions: "Conversions",
  revenue: "Revenue",
  events: "Events",
  new_users: "New users",
};

// For these a fall is good news (the change is coloured accordingly).
export const LOWER_IS_BETTER = new Set(["bounce_rate"]);

export function duration(seconds) {
  const total = Math.round(seconds);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const rest = total % 60;
  if (hours) return minutes ? `${hours}h ${minutes}m` : `${hours}h`;
  if (minutes) return rest ? `${minutes}m ${rest}s` : `${minutes}m`;
  return `${rest}s`;
}

export function metricValue(metric, value) {
  if (value === null || value === undefined) return "\u2013";
  if (metric === "bounce_rate" || metric === "conversion_rate") return percent.format(value);
  if (metric === "avg_session_duration") return duration(value);
  if (metric === "revenue") return decimal.format(value);
  if (metric === "views_per_session") return decimal.format(value);
  return integer.format(value);
}

// "1 row", "2 rows", "27,172 duplicates".
export function count(n, singular, plural = `${singular}s`) {
  return `${integer.format(n)} ${n === 1 ? singular : plural}`;
}

// The browser's own timezone, for labels of times shown in it.
export function browserZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
}

export function change(value) {
  if (value === null || value === undefined) return null;
  const sign = value > 0 ? "+" : value < 0 ? "\u2212" : "";
  return sign + percent.format(Math.abs(value));
}

export function freshness(iso, timezone) {
  if (!iso) return "No data imported yet";
  const when = new Date(iso);
  const options = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
  if (timezone) options.timeZone = timezone;
  const sameDay = new Date().toDateString() === when.toDateString();
  if (!sameDay) Object.assign(options, { day: "numeric", month: "short" });
  const zone = timezone ? ` (${timezone})` : ` (${browserZone()})`;
  return `Data up to ${new Intl.DateTimeFormat("en-GB", options).format(when)}${zone}`;
}

export function dateTime(iso) {
  if (!iso) return "\u2013";
  return new Intl.DateTimeFormat("en-GB", {
    day: "numeric",
    month: "short",
    hour: "2-digit",
    minute: "2-digit",
    hourCycle: "h23",
  }).format(new Date(iso));
}

export function bucketLabel(label, interval) {
  // Labels are ISO dates or date-times in the tenant's timezone; keep them short.
  if (interval === "hour") return label.slice(5, 16).replace("T", " ");
  if (interval === "month") return label.slice(0, 7);
  return label.slice(5, 10);
}
