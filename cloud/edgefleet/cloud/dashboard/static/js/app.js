// The dashboard shell: one EventSource for live state, a hash router, and the views.
import { Overview } from "./overview.js";
import { DevicePage } from "./device.js";
import { Assignments, Learning, Quarantine } from "./lists.js";
import { send, session } from "./util.js";

const state = { version: 0, devices: new Map(), summary: null, alerts: [], markers: {} };
const view = document.getElementById("view");
const live = document.getElementById("live");
let current = null;
let source = null;
let streamDevice = undefined;

function applySnapshot(s) {
  state.version = s.v;
  state.devices = new Map(s.devices.map((d) => [d.id, d]));
  state.summary = s.summary;
  state.alerts = s.alerts;
  state.markers = s.markers;
}

function applyDiff(d) {
  state.version = d.v;
  for (const row of d.upsert || []) state.devices.set(row.id, row);
  for (const id of d.remove || []) state.devices.delete(id);
  if (d.summary) state.summary = d.summary;
  if (d.alerts) state.alerts = d.alerts;
  if (d.markers) state.markers = d.markers;
}

function connect(device) {
  if (source && streamDevice === device) return;
  if (source) source.close();
  streamDevice = device;
  const url = "dashboard/api/stream" + (device ? `?device=${encodeURIComponent(device)}` : "");
  source = new EventSource(url);
  source.onopen = () => { live.dataset.state = "live"; live.textContent = "live"; };
  source.onerror = () => {
    live.dataset.state = "down";
    live.textContent = "reconnecting";
    session(); // a stream refused with 401 (session ended) goes back to the login page
  };
  source.addEventListener("snapshot", (e) => { applySnapshot(JSON.parse(e.data)); current?.update(state); });
  source.addEventListener("diff", (e) => { applyDiff(JSON.parse(e.data)); current?.update(state); });
  source.addEventListener("series", (e) => current?.series?.(JSON.parse(e.data)));
}

function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "").split("/");
  const name = parts[0] || "overview";
  current?.destroy?.();
  view.replaceChildren();
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.nav === name);
  }
  if (name === "device" && parts[1]) {
    const id = decodeURIComponent(parts[1]);
    current = new DevicePage(view, id);
    connect(id);
  } else {
    const View = { assignments: Assignments, learning: Learning, quarantine: Quarantine }[name] || Overview;
    current = new View(view);
    connect(null);
  }
  if (state.summary) current.update(state);
}

window.addEventListener("hashchange", route);
document.getElementById("logout").addEventListener("click", async () => {
  await send("POST", "auth/logout");
  location.replace("login");
});
session().then((s) => {
  if (!s) return;
  document.getElementById("who").textContent = `${s.name} (${s.role})`;
  route();
});
