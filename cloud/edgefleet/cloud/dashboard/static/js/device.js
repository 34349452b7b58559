// One device: its state, live charts of its telemetry (uPlot), class counts, assignments.
import { ago, chips, getJSON, h, num, when } from "./util.js";

const MAX_POINTS = 600;
// Chart id -> title, source table, series [key, label, color].
const CHARTS = {
  latency: ["Inference latency (ms)", "inference", [["latency", "latency ms", "#3451b2"]]],
  score: ["Anomaly score", "inference", [["score", "score", "#c62828"]]],
  cpu: ["CPU % and temperature °C", "health", [["cpu", "CPU %", "#1a7f37"], ["temp", "°C", "#b26a00"]]],
  outbox: ["Outbox depth", "health", [["outbox", "records", "#6f42c1"]]],
};

export class DevicePage {
  constructor(root, id) {
    this.id = id;
    this.data = { health: { t: [] }, inference: { t: [] } };
    this.labels = {};
    this.plots = {};
    this.head = h("div");
    this.stats = h("div", { class: "cards" });
    this.labelBox = h("div", { class: "bars", "data-testid": "labels" });
    this.assignBox = h("div", { class: "tablewrap" });
    const charts = h("div", { class: "charts" });
    this.boxes = {};
    for (const [key, [title]] of Object.entries(CHARTS)) {
      this.boxes[key] = h("div", { class: "chart", "data-chart": key, "data-points": 0 }, h("h3", {}, title));
      charts.append(this.boxes[key]);
    }
    root.append(h("p", {}, h("a", { href: "#/" }, "‹ Fleet")), this.head, this.stats,
      h("h2", {}, "Telemetry"), charts, h("h2", {}, "Classes seen"), this.labelBox,
      h("h2", {}, "Model assignments"), this.assignBox);
    this.resize = () => this.fit();
    window.addEventListener("resize", this.resize);
    this.loadAssignments();
  }

  destroy() {
    window.removeEventListener("resize", this.resize);
    for (const p of Object.values(this.plots)) p.destroy();
  }

  update(state) {
    const d = state.devices.get(this.id);
    if (!d) {
      this.head.replaceChildren(h("h1", {}, this.id), h("p", { class: "muted" }, "This device has not been seen."));
      return;
    }
    const key = JSON.stringify(state.markers.assignments);
    if (key !== this.assignKey) { this.assignKey = key; this.loadAssignments(); }
    this.head.replaceChildren(
      h("h1", {}, d.id, " ", h("span", { class: `state ${d.on ? "on" : "off"}`, "data-testid": "device-state" },
        d.on ? "online" : `offline${d.why ? ` (${d.why})` : ""}`)),
      h("p", { class: "muted" }, `fleet ${d.fleet} · model ${d.model || "none"} · agent ${d.agent || "?"} · seen ${ago(d.seen)}`),
      d.tags.length ? chips(Object.fromEntries(d.tags.map((t) => [t, ""]))) : "");
    this.stats.replaceChildren(
      stat("CPU %", num(d.cpu)), stat("Temperature °C", num(d.temp, 1)), stat("Latency p95 ms", num(d.p95, 1)),
      stat("Inferences", num(d.inf)), stat("Outbox", num(d.outbox)), stat("Outbox drops", num(d.drops)));
  }

  series(s) {
    for (const table of ["health", "inference"]) {
      const into = this.data[table], add = s[table];
      for (const [k, v] of Object.entries(add)) into[k] = (into[k] || []).concat(v).slice(-MAX_POINTS);
    }
    for (const [label, n] of Object.entries(s.labels)) this.labels[label] = (this.labels[label] || 0) + n;
    this.draw();
  }

  draw() {
    for (const [key, [title, table, series]] of Object.entries(CHARTS)) {
      const src = this.data[table];
      const data = [src.t, ...series.map(([k]) => (src[k] || []).map((v) => (v === null ? null : v)))];
      const box = this.boxes[key];
      box.dataset.points = String(src.t.length);
      if (!src.t.length || !window.uPlot) continue;
      if (!this.plots[key]) {
        this.plots[key] = new window.uPlot({
          width: Math.max(260, box.clientWidth - 16), height: 180, title: "",
          series: [{}, ...series.map(([, label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: true }))],
          axes: [{}, { size: 50 }],
        }, data, box);
      } else {
        this.plots[key].setData(data);
      }
    }
    const total = Object.values(this.labels).reduce((a, b) => a + b, 0);
    const rows = Object.entries(this.labels).sort((a, b) => b[1] - a[1]);
    this.labelBox.replaceChildren(...(rows.length ? rows.map(([label, n]) => h("div", { class: "bar" },
      h("span", { style: "min-width:6rem" }, label),
      h("span", { class: "fill", style: `width:${Math.max(2, (60 * n) / total)}%` }), h("span", { class: "muted" }, n)))
      : [h("p", { class: "muted" }, "No labelled inferences yet.")]));
  }

  fit() {
    for (const [key, p] of Object.entries(this.plots)) p.setSize({ width: Math.max(260, this.boxes[key].clientWidth - 16), height: 180 });
  }

  async loadAssignments() {
    try {
      const all = await getJSON("v1/assignments?limit=100");
      const mine = all.flatMap((a) => a.targets.filter((t) => t.device_id === this.id).map((t) => [a, t]));
      this.assignBox.replaceChildren(mine.length ? h("table", {}, h("thead", {}, h("tr", {},
        ["Model", "Assigned", "State", "Reason", "Updated"].map((c) => h("th", {}, c)))),
        h("tbody", {}, mine.map(([a, t]) => h("tr", {}, h("td", {}, `${a.model}@${a.version}`), h("td", {}, when(a.created_at)),
          h("td", {}, h("span", { class: `chip ${t.state}` }, t.state)), h("td", {}, t.reason || ""), h("td", {}, when(t.updated_at))))))
        : h("p", { class: "muted", style: "padding:.5rem" }, "No assignments for this device."));
    } catch (e) {
      this.assignBox.replaceChildren(h("p", { class: "muted" }, String(e)));
    }
  }
}

function stat(label, value) {
  return h("div", { class: "card" }, h("div", { class: "n" }, value), h("div", { class: "label" }, label));
}
