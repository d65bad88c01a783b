// devalloc dashboard: polls the API once a second with the API key kept in
// this tab's session storage. No build step, no dependencies.
"use strict";

const keyStore = "devalloc.key";
const pollMs = 1000;
let timer = null;
let lastStates = null; // device name -> "state holder" seen at the previous poll
let lastLeases = new Map(); // device name -> its active lease at the previous poll
const events = [];

const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + sessionStorage.getItem(keyStore) },
      body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  if (res.status === 401) {
    signOut("That key was not accepted.");
    throw new Error("unauthorized");
  }
  if (!res.ok) {
    let detail = res.status + " " + res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return res.status === 204 ? null : res.json();
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function timeLeft(expiresAt) {
  const s = Math.round((new Date(expiresAt) - Date.now()) / 1000);
  if (s <= 0) return "expiring";
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}

// span renders seconds the way timeLeft does; "" when nobody waits.
function span(seconds) {
  const s = Math.round(seconds);
  if (seconds <= 0) return "";
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}

function noteEvents(devices, leaseByDevice) {
  const now = new Date().toLocaleTimeString();
  const seen = new Map();
  for (const d of devices) {
    const lease = leaseByDevice.get(d.name);
    const holder = lease ? (lease.holder || lease.owner) : "";
    seen.set(d.name, d.state + " " + holder);
    if (!lastStates) continue;
    const before = lastStates.get(d.name);
    if (before === undefined) { events.unshift(now + "  " + d.name + " registered (" + d.state + ")"); continue; }
    const wasState = before.split(" ")[0];
    if (wasState === d.state) continue;
    let what = d.state;
    if (wasState === "leased" && lastLeases.has(d.name)) {
      // How the lease ended (released, expired, revoked) is on the lease.
      endedEvent(now, d, lastLeases.get(d.name));
      continue;
    }
    if (d.state === "leased") what = "acquired by " + (holder || "someone");
    else if (d.state === "idle" && wasState === "offline") what = "recovered";
    else if (d.state === "offline") what = "went offline: " + d.state_reason;
    else if (d.state === "maintenance") what = "in maintenance" + (d.state_reason ? ": " + d.state_reason : "");
    events.unshift(now + "  " + d.name + " " + what);
  }
  lastStates = seen;
  lastLeases = leaseByDevice;
  showEvents();
}

function showEvents() {
  events.splice(50);
  const ol = $("events");
  ol.replaceChildren(...events.map((e) => { const li = document.createElement("li"); li.textContent = e; return li; }));
}

async function endedEvent(now, d, lease) {
  let how = "released";
  try {
    const ended = await api("GET", "/v1/leases/" + lease.id);
    how = ended.end_reason || how;
  } catch (_) { /* not ours to read, or gone: say released */ }
  let what = how + " (lease of " + (lease.holder || lease.owner) + ")";
  if (d.state === "maintenance") what += ", now in maintenance";
  events.unshift(now + "  " + d.name + " " + what);
  showEvents();
}

async function refresh() {
  try {
    const [pools, devices, leases] = await Promise.all([
      api("GET", "/v1/pools"),
      api("GET", "/v1/devices?limit=1000"),
      api("GET", "/v1/leases?active=true&limit=1000"),
    ]);
    const leaseByDevice = new Map(leases.leases.map((l) => [l.device.name, l]));
    $("pools").replaceChildren(...pools.pools.map((p) => {
      const tr = document.createElement("tr");
      tr.dataset.pool = p.name;
      for (const v of [p.name, p.idle, p.leased, p.offline, p.maintenance, p.waiting, span(p.oldest_wait_seconds)]) cell(tr, String(v));
      return tr;
    }));
    $("devices").replaceChildren(...devices.devices.map((d) => {
      const lease = leaseByDevice.get(d.name);
      const tr = document.createElement("tr");
      tr.dataset.device = d.name;
      tr.dataset.state = d.state;
      cell(tr, d.name);
      cell(tr, d.pool);
      cell(tr, d.state + (d.drain ? " (draining)" : ""), "state-" + d.state);
      cell(tr, lease ? (lease.holder ? lease.holder + " (" + lease.owner + ")" : lease.owner) : "");
      cell(tr, lease ? timeLeft(lease.expires_at) : "");
      cell(tr, d.state_reason);
      const actions = cell(tr, "");
      if (d.state !== "maintenance" && !d.drain) {
        actions.appendChild(button("maintenance", () => api("PATCH", "/v1/devices/" + encodeURIComponent(d.name), { drain: true, reason: "from the dashboard" })));
      } else {
        actions.appendChild(button("back to idle", () => api("PATCH", "/v1/devices/" + encodeURIComponent(d.name), { drain: false })));
      }
      if (lease) actions.appendChild(button("revoke", () => api("DELETE", "/v1/leases/" + lease.id)));
      return tr;
    }));
    noteEvents(devices.devices, leaseByDevice);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("status").textContent = "could not refresh: " + e.message;
  }
}

function button(label, action) {
  const b = document.createElement("button");
  b.className = "small";
  b.textContent = label;
  b.addEventListener("click", async () => {
    try { await action(); } catch (e) { $("status").textContent = label + " failed: " + e.message; }
    refresh();
  });
  return b;
}

function signIn() {
  $("signin-form").hidden = true;
  $("board").hidden = false;
  $("signout").hidden = false;
  $("signin-error").textContent = "";
  lastStates = null;
  refresh();
  timer = setInterval(refresh, pollMs);
}

function signOut(message) {
  sessionStorage.removeItem(keyStore);
  clearInterval(timer);
  $("board").hidden = true;
  $("signout").hidden = true;
  $("signin-form").hidden = false;
  $("signin-error").textContent = message || "";
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(keyStore, $("key").value.trim());
  $("key").value = "";
  signIn();
});
$("signout").addEventListener("click", () => signOut());
if (sessionStorage.getItem(keyStore)) signIn();
