// The time-series chart: an SVG line (and dashed comparison line) drawn from the API rows.
import { s } from "./dom.js";
import { bucketLabel, metricValue } from "./format.js";

const WIDTH = 720;
const HEIGHT = 240;
const PAD = { top: 16, right: 16, bottom: 28, left: 56 };

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function path(points) {
  return points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
}

// points: [{label, value, previous}] in time order.
export function lineChart(points, { metric, interval, title }) {
  const values = points.flatMap((p) => [p.value, p.previous]).filter((v) => typeof v === "number");
  const top = niceMax(Math.max(0, ...values));
  const innerW = WIDTH - PAD.left - PAD.right;
  const innerH = HEIGHT - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (points.length <= 1 ? innerW / 2 : (i * innerW) / (points.length - 1));
  const y = (v) => PAD.top + innerH - (innerH * (v || 0)) / top;
  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": title,
    preserveAspectRatio: "none",
  });
  svg.append(s("title", { text: title }));
  for (let i = 0; i <= 4; i++) {
    const value = (top * i) / 4;
    const gy = y(value);
    svg.append(
      s("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: gy, y2: gy }),
      s("text", { class: "axis", x: PAD.left - 8, y: gy + 4, "text-anchor": "end", text: metricValue(metric, value) }),
    );
  }
  const every = Math.max(1, Math.ceil(points.length / 8));
  points.forEach((p, i) => {
    const last = i === points.length - 1;
    // Label every few buckets and the last one, unless it would collide with the one before.
    if ((i % every === 0 && points.length - 1 - i >= every / 2) || last) {
      svg.append(
        s("text", { class: "axis", x: x(i), y: HEIGHT - 8, "text-anchor": "middle", text: bucketLabel(p.label, interval) }),
      );
    }
  });
  const hasPrevious = points.some((p) => typeof p.previous === "number");
  if (hasPrevious) {
    svg.append(s("path", { class: "line previous", d: path(points.map((p, i) => [x(i), y(p.previous)])) }));
  }
  const current = points.map((p, i) => [x(i), y(p.value)]);
  if (current.length) {
    const area = `${path(current)}L${current[current.length - 1][0]},${y(0)}L${current[0][0]},${y(0)}Z`;
    svg.append(s("path", { class: "area", d: area }), s("path", { class: "line", d: path(current) }));
  }
  points.forEach((p, i) => {
    const dot = s("circle", { class: "dot", cx: x(i), cy: y(p.value), r: points.length > 60 ? 1.5 : 3 });
    const text = `${p.label}: ${metricValue(metric, p.value)}` + (hasPrevious ? ` (before: ${metricValue(metric, p.previous)})` : "");
    dot.append(s("title", { text }));
    svg.append(dot);
  });
  return svg;
}
