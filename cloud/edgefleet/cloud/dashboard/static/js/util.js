// Small DOM and formatting helpers. Data is always set as text, never parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// The session's CSRF token (from auth/session); every state-changing request sends it.
let csrf = null;

function toLogin() {
  location.replace("login");
}

export async function session() {
  const r = await fetch("auth/session", { headers: { Accept: "application/json" } });
  if (r.status === 401) { toLogin(); return null; }
  if (!r.ok) throw new Error(`auth/session: HTTP ${r.status}`);
  const s = await r.json();
  csrf = s.csrf;
  return s;
}

export async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  if (r.status === 401) toLogin();
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

export async function send(method, url, body) {
  const headers = { Accept: "application/json", "X-CSRF-Token": csrf || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) toLogin();
  if (!r.ok) throw new Error(`${method} ${url}: HTTP ${r.status}`);
  return r.json();
}

export function num(v, digits = 0) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

export function ago(ts) {
  if (!ts) return "–";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

export function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "–";
}

export function chips(counts, cls = () => "") {
  const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
  if (!entries.length) return h("span", { class: "muted" }, "none");
  return h("div", { class: "chips" },
    entries.map(([k, n]) => h("span", { class: `chip ${cls(k)}` }, k, h("b", {}, n))));
}
