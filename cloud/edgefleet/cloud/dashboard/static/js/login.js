// The login page: trade a pasted API token for an HttpOnly session cookie, then go to the page.
const form = document.getElementById("login");
const error = document.getElementById("error");
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  error.textContent = "";
  const token = document.getElementById("token").value.trim();
  const r = await fetch("auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ token }),
    credentials: "same-origin",
  });
  if (r.ok) {
    location.replace("./");
    return;
  }
  let detail = `${r.status}`;
  try { detail = (await r.json()).detail || detail; } catch { /* not JSON */ }
  error.textContent = `Login refused: ${detail}`;
});
