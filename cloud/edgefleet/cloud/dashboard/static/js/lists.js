// Assignments with their acks, federated rounds, and quarantined messages.
import { chips, getJSON, h, when } from "./util.js";

class ListView {
  constructor(root, title, note) {
    this.body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    root.append(h("h1", {}, title), h("p", { class: "muted" }, note), this.body);
    this.marker = undefined;
    this.load();
  }

  update(state) {
    const m = JSON.stringify(this.markerOf(state.markers));
    if (this.marker !== undefined && m !== this.marker) this.load();
    this.marker = m;
  }

  markerOf() { return null; }

  async load() {
    try {
      this.body.replaceChildren(this.render(await getJSON(this.url)));
    } catch (e) {
      this.body.replaceChildren(h("p", { class: "muted" }, String(e)));
    }
  }
}

function table(headers, rows, id) {
  return h("div", { class: "tablewrap" }, h("table", { "data-testid": id },
    h("thead", {}, h("tr", {}, headers.map((c) => h("th", {}, c)))), h("tbody", {}, rows)));
}

export class Assignments extends ListView {
  constructor(root) {
    super(root, "Model assignments", "Each assignment and every target's ack: sent → received → succeeded, failed or refused.");
  }
  get url() { return "v1/assignments?limit=100"; }
  markerOf(m) { return m.assignments; }
  render(items) {
    if (!items.length) return h("p", { class: "muted", "data-testid": "assignments-empty" }, "No assignments yet.");
    const counts = (a) => a.targets.reduce((c, t) => ((c[t.state] = (c[t.state] || 0) + 1), c), {});
    return table(["Created", "Model", "Selector", "Targets"], items.map((a) => {
      const details = h("details", {}, h("summary", {}, chips(counts(a), (s) => s)),
        table(["Device", "State", "Reason", "Updated"], a.targets.map((t) => h("tr", {},
          h("td", {}, h("a", { href: `#/device/${encodeURIComponent(t.device_id)}` }, t.device_id)),
          h("td", {}, h("span", { class: `chip ${t.state}` }, t.state)), h("td", {}, t.reason || ""), h("td", {}, when(t.updated_at))))));
      return h("tr", { "data-assignment": a.id }, h("td", {}, when(a.created_at)), h("td", {}, `${a.model}@${a.version}`),
        h("td", {}, `${a.selector_kind} ${a.selector.join(", ")}`), h("td", { class: "wrap" }, details));
    }), "assignments");
  }
}

export class Learning extends ListView {
  constructor(root) {
    super(root, "Federated learning", "Rounds and their metrics, newest first.");
  }
  get url() { return "dashboard/api/rounds?limit=100"; }
  markerOf(m) { return m.rounds; }
  render(rounds) {
    if (!rounds.length) return h("p", { class: "muted", "data-testid": "rounds-empty" }, "No federated rounds yet.");
    return table(["Run", "Round", "Started", "Clients", "Metrics"], rounds.map((r) => h("tr", {},
      h("td", {}, r.run_id ?? ""), h("td", { class: "num" }, r.round ?? ""), h("td", {}, when(r.started_at)),
      h("td", { class: "num" }, r.participants ?? ""),
      h("td", { class: "wrap" }, Object.entries(r.metrics || {}).map(([k, v]) => `${k}=${typeof v === "number" ? v.toFixed(4) : v}`).join("  ")))),
      "rounds");
  }
}

export class Quarantine extends ListView {
  constructor(root) {
    super(root, "Quarantine", "Messages ingest refused, with the check that failed and the start of the payload.");
  }
  get url() { return "v1/quarantine?limit=200"; }
  markerOf(m) { return m.quarantine; }
  render(items) {
    if (!items.length) return h("p", { class: "muted", "data-testid": "quarantine-empty" }, "Nothing quarantined.");
    const text = (b64) => { try { return atob(b64).replace(/[^\x20-\x7e]/g, "·").slice(0, 120); } catch { return ""; } };
    return table(["Received", "Reason", "Device", "Topic", "Detail", "Bytes", "Payload"], items.map((q) => h("tr", {},
      h("td", {}, when(q.received_at)), h("td", {}, h("span", { class: "chip failed" }, q.reason)), h("td", {}, q.device_id || "–"),
      h("td", { class: "wrap" }, q.topic), h("td", { class: "wrap" }, q.detail), h("td", { class: "num" }, q.payload_size),
      h("td", { class: "wrap" }, h("code", {}, text(q.payload_excerpt_b64))))), "quarantine");
  }
}
