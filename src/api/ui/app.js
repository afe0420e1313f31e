// saltpeter's web UI: a small single-page app over /api/v1 (no framework, no build step).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const view = () => $("#view");
let timer = null;
let streams = [];
// Bumped on every navigation: a request that returns after the user left its
// page must not write into the page shown now (same ids, or none at all).
let shown = 0;
let state = { maintenance: false };

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function token() { return localStorage.getItem("saltpeter-token") || ""; }

async function api(method, path, body) {
  // The header (and the JSON type) mark a call the daemon knows is its own page's: a foreign
  // page cannot send them without a CORS preflight, which the daemon never grants.
  const headers = { "X-Saltpeter-Request": "1" };
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new Error((data && data.error) || res.statusText);
  return data;
}

function say(text, info) {
  const m = $("#message");
  m.textContent = text;
  m.className = "message" + (info ? " info" : "");
  m.hidden = !text;
  if (text) setTimeout(() => { if (m.textContent === text) m.hidden = true; }, 6000);
}

// What an exit code means, as the daemon's contract says.
const MEANING = { 0: "success", 124: "job timeout", 126: "wrapper not executable", 127: "wrapper not found",
  143: "killed by user request", 253: "heartbeat lost", 254: "overlap refused by the wrapper's lock", 255: "error" };

function codeBadge(code, meaning) {
  if (code === null || code === undefined) return "";
  const m = meaning || MEANING[code] || (code > 128 && code < 193 ? "killed by a signal" : "the command's exit status");
  return `<span class="badge ${code === 0 ? "ok" : "bad"}" data-code="${code}">${code} · ${esc(m)}</span>`;
}

function runBadge(run) {
  if (!run) return `<span class="badge idle">never ran</span>`;
  if (run.running) return `<span class="badge run">running</span>`;
  if (run.success) return `<span class="badge ok">ok ${run.succeeded}/${run.total}</span>`;
  return `<span class="badge bad">failed ${run.succeeded}/${run.total}</span>`;
}

// A fire-ledger row as one cell of a job's slot strip: its colour says the outcome, its title
// the details, and a fired row links to its run.
function slotCell(r) {
  const fired = r.state === "fired";
  const outcome = !fired ? r.state : r.success === true ? "ok" : r.success === false ? "bad" : r.ended ? "ended" : "run";
  const result = { ok: "succeeded", bad: "failed", run: "running", ended: "ended" }[outcome];
  const gap = r.state === "missed" && (r.count > 1 || r.last);
  const lines = [
    r.slot ? `slot ${when(r.slot)}` : `manual run, ${when(r.claimed_at)}`,
    `${r.state}${r.reason ? " (" + r.reason + ")" : ""}${r.trigger === "catch-up" ? ", catch-up" : ""}`,
  ];
  if (gap) lines.push(`${r.count} slots, ${when(r.slot)} to ${when(r.last || r.slot)}`);
  if (fired && r.instance) lines.push(`run ${r.instance}: ${result}`);
  if (r.detail) lines.push(r.detail);
  const cls = `slot ${esc(r.state)}${fired ? " " + outcome : ""}${r.slot ? "" : " manual"}${gap ? " gap" : ""}`;
  const title = esc(lines.join("\n"));
  return fired && r.instance
    ? `<a class="${cls}" href="#/run/${encodeURIComponent(r.instance)}" title="${title}" data-state="${esc(r.state)}"></a>`
    : `<span class="${cls}" title="${title}" data-state="${esc(r.state)}"></span>`;
}

// The jobs table's mark for a job whose last due slot did not fire.
function deliveryBadge(d) {
  const cls = { delivered: "ok", failed: "bad", pending: "run", suppressed: "warn" }[d.state] || "";
  const tries = d.attempts > 1 ? ` after ${d.attempts} attempts` : "";
  const why = d.last_error && d.state !== "delivered" ? ` title="${esc(d.last_error)}"` : "";
  const next = d.state === "pending" && d.next_attempt_at ? `, next try ${esc(when(d.next_attempt_at))}` : "";
  return `<span class="badge ${cls}"${why}>${esc(d.state)}</span>${esc(tries)}${next}`;
}

function missedBadge(j) {
  if (j.last_due_fired !== false) return "";
  const why = j.last_slot_state === "fired"
    ? "a slot after the last one fired is overdue and unclaimed (is the daemon stuck?)"
    : `the last slot was ${j.last_slot_state || "never claimed"}${j.last_slot_reason ? " (" + j.last_slot_reason + ")" : ""}`;
  return ` <span class="badge missed" title="${esc("Last due slot did not fire: " + why)}">missed</span>`;
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

function duration(a, b) {
  if (!a) return "";
  const ms = (b ? new Date(b) : new Date()) - new Date(a);
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${Math.floor(s / 3600)}h ${Math.floor(s / 60) % 60}m`;
}

// The schedule in words, for the common shapes; the fields otherwise.
function inWords(expr, tz) {
  const [sec, min, hour, dom, mon, dow, year] = expr.split(/\s+/);
  const all = f => f === "*" || f === undefined;
  const every = f => (f || "").startsWith("*/") ? Number(f.slice(2)) : null;
  const pad = n => String(n).padStart(2, "0");
  const num = f => /^\d+$/.test(f || "");
  let s;
  if (every(sec) && all(min) && all(hour)) s = `every ${every(sec)} seconds`;
  else if (num(sec) && every(min) && all(hour)) s = `every ${every(min)} minutes`;
  else if (num(sec) && all(min) && all(hour)) s = `every minute at :${pad(sec)}`;
  else if (num(sec) && num(min) && all(hour)) s = `every hour at ${pad(min)}:${pad(sec)}`;
  else if (num(sec) && num(min) && every(hour)) s = `every ${every(hour)} hours at ${pad(min)}:${pad(sec)}`;
  else if (num(sec) && num(min) && num(hour)) s = `at ${pad(hour)}:${pad(min)}:${pad(sec)}`;
  else s = expr;
  const days = [];
  if (!all(dom)) days.push(`day ${dom}`);
  if (!all(mon)) days.push(`month ${mon}`);
  if (!all(dow)) days.push(`weekday ${dow}`);
  if (!all(year)) days.push(`year ${year}`);
  if (s !== expr) s += days.length ? ` on ${days.join(", ")}` : (num(hour) ? " every day" : "");
  return `${s} (${tz})`;
}

function clear() {
  shown += 1;
  if (timer) clearInterval(timer);
  timer = null;
  streams.forEach(s => s.close());
  streams = [];
}

// Runs `fn(still)` now and every `ms`; `still()` is false once the user has
// navigated away, and every refresh checks it after its awaits.
function every(ms, fn) {
  const page = shown;
  const still = () => page === shown;
  fn(still);
  timer = setInterval(() => fn(still), ms);
}

// ---- header: version, maintenance, token ----

async function refreshHeader() {
  try {
    const s = await api("GET", "/api/v1/status");
    $("#version").textContent = s.version;
    state.maintenance = s.maintenance.global;
    $("#banner").hidden = !state.maintenance;
    $("#maint-toggle").textContent = state.maintenance ? "End maintenance" : "Maintenance";
  } catch (e) { say("The daemon does not answer: " + e.message); }
}

$("#maint-toggle").addEventListener("click", async () => {
  const on = !state.maintenance;
  if (on && !confirm("Global maintenance: no new runs start until it is switched off. Continue?")) return;
  try { await api("POST", "/api/v1/maintenance", { on }); say(on ? "Maintenance on" : "Maintenance off", true); }
  catch (e) { say(e.message); }
  refreshHeader();
});

$("#token-button").addEventListener("click", () => {
  const t = prompt("Operator token (kept in this browser):", token());
  if (t !== null) localStorage.setItem("saltpeter-token", t.trim());
});

// ---- pages ----

async function jobsPage() {
  view().innerHTML = `<h1>Jobs</h1><table id="jobs"><thead><tr><th>Job</th><th class="hide-narrow">Group</th>
    <th>Schedule</th><th class="hide-narrow">Targets</th><th>Last result</th><th>Next run</th></tr></thead><tbody></tbody></table>`;
  every(2000, async still => {
    let data;
    try { data = await api("GET", "/api/v1/jobs"); } catch (e) { return say(e.message); }
    if (!still()) return;
    const rows = data.jobs.map(j => `<tr data-job="${esc(j.name)}">
      <td><a href="#/job/${encodeURIComponent(j.name)}">${esc(j.name)}</a></td>
      <td class="hide-narrow">${esc(j.group)}</td>
      <td>${esc(inWords(j.schedule, j.timezone))}</td>
      <td class="hide-narrow"><code>${esc(Array.isArray(j.targets) ? j.targets.join(", ") : j.targets)}</code></td>
      <td class="last">${j.running.length ? `<span class="badge run">running</span>` : runBadge(j.last_run)}${missedBadge(j)}</td>
      <td>${esc(when(j.next_runs[0]))}</td></tr>`).join("");
    $("#jobs tbody").innerHTML = rows || `<tr><td colspan="6" class="muted">No jobs in the config directory.</td></tr>`;
  });
}

async function jobPage(name) {
  view().innerHTML = `<h1>${esc(name)}</h1><div id="job-facts"></div>
    <div class="actions"><button class="primary" id="run-now">Run now</button>
    <button class="danger" id="kill-run" hidden>Kill run</button></div>
    <h2>Slots</h2><div id="slots" class="slots"></div>
    <p class="muted slot-legend">The last 60, oldest first: <span class="slot fired ok"></span> fired, ok
      <span class="slot fired bad"></span> failed <span class="slot fired run"></span> running
      <span class="slot skipped"></span> skipped <span class="slot missed"></span> missed
      <span class="slot fired ok manual"></span> manual run. Hover for details; a fired one opens its run.</p>
    <h2>Runs</h2><table id="runs"><thead><tr><th>Run</th><th>Trigger</th><th>Started</th><th>Took</th><th>Result</th></tr></thead><tbody></tbody></table>
    <h2>Skipped slots</h2><div id="skips" class="muted"></div>
    <h2>Notifications</h2><div id="notify-policy"></div>
    <table id="deliveries"><thead><tr><th>Sent</th><th>Event</th><th>Channel</th><th>Outcome</th></tr></thead><tbody></tbody></table>`;
  $("#run-now").addEventListener("click", async () => {
    try {
      const r = await api("POST", `/api/v1/jobs/${encodeURIComponent(name)}/run`);
      location.hash = `#/run/${encodeURIComponent(r.instance)}`;
    } catch (e) { say("Run now refused: " + e.message); }
  });
  $("#kill-run").addEventListener("click", async () => {
    if (!confirm(`Kill the running ${name}?`)) return;
    try { await api("POST", `/api/v1/jobs/${encodeURIComponent(name)}/kill`); say("Kill sent", true); }
    catch (e) { say(e.message); }
  });
  every(2000, async still => {
    let job, runs, slots, sent;
    try {
      job = await api("GET", `/api/v1/jobs/${encodeURIComponent(name)}`);
      runs = await api("GET", `/api/v1/jobs/${encodeURIComponent(name)}/runs?limit=30`);
      slots = await api("GET", `/api/v1/jobs/${encodeURIComponent(name)}/slots?limit=60`);
      sent = await api("GET", `/api/v1/jobs/${encodeURIComponent(name)}/deliveries?limit=10`);
    } catch (e) { return say(e.message); }
    if (!still()) return;
    $("#job-facts").innerHTML = `<dl class="facts">
      <dt>Schedule</dt><dd>${esc(inWords(job.schedule, job.timezone))} <code>${esc(job.schedule)}</code></dd>
      <dt>Next runs</dt><dd>${job.next_runs.map(when).map(esc).join("<br>")}</dd>
      <dt>Targets</dt><dd><code>${esc(Array.isArray(job.targets) ? job.targets.join(", ") : job.targets)}</code> (${esc(job.target_type)})</dd>
      <dt>Command</dt><dd><code>${esc(job.command)}</code></dd>
      <dt>Timeout</dt><dd>${job.timeout ? job.timeout + " s" : "none"}</dd>
      <dt>Defined in</dt><dd><code>${esc(job.source)}</code></dd></dl>`;
    $("#kill-run").hidden = job.running.length === 0;
    $("#slots").innerHTML = slots.slots.slice().reverse().map(slotCell).join("")
      || `<span class="muted">No slot due yet${job.slots.next ? ": the next is " + esc(when(job.slots.next)) : ""}.</span>`;
    $("#runs tbody").innerHTML = runs.runs.map(r => `<tr>
      <td><a href="#/run/${encodeURIComponent(r.instance)}">${esc(r.instance)}</a></td><td>${esc(r.trigger)}</td>
      <td>${esc(when(r.started_at))}</td><td>${esc(duration(r.started_at, r.ended_at))}</td><td>${runBadge(r)}</td></tr>`).join("")
      || `<tr><td colspan="5" class="muted">No runs recorded yet.</td></tr>`;
    $("#notify-policy").innerHTML = job.notify
      ? `Notifies on ${job.notify.when.map(w => typeof w === "string" ? esc(w.replace("_", " "))
          : Object.entries(w).map(([k, v]) => `${esc(k.replaceAll("_", " "))} ${esc(v)}`).join("")).join(", ")}:
         ${job.notify.to.map(c => `<code>${esc(c.name)}</code> (${esc(c.kind || "not configured")})`).join(", ")}.`
      : `<span class="muted">This job notifies nobody.</span>`;
    $("#deliveries tbody").innerHTML = sent.deliveries.map(d => `<tr data-delivery="${esc(d.id)}">
      <td>${esc(when(d.done_at || d.created_at))}</td><td>${esc(d.event.replace("_", " "))}</td><td>${esc(d.channel)}</td>
      <td>${deliveryBadge(d)}</td></tr>`).join("")
      || `<tr><td colspan="4" class="muted">No notifications sent yet.</td></tr>`;
    $("#skips").innerHTML = job.skipped.length
      ? job.skipped.map(s => `${esc(when(s.at))}: ${esc(s.reason)} (${esc(s.detail)})`).join("<br>") : "None.";
  });
}

async function runPage(instance) {
  view().innerHTML = `<h1>${esc(instance)}</h1><div id="run-facts"></div>
    <div class="actions"><button class="danger" id="kill-all" hidden>Kill run</button></div>
    <table id="targets"><thead><tr><th>Target</th><th>State</th><th>Exit code</th><th class="hide-narrow">Started</th>
    <th>Took</th><th class="hide-narrow">Heartbeat</th><th></th></tr></thead><tbody></tbody></table><div id="outputs"></div>`;
  $("#kill-all").addEventListener("click", async () => {
    if (!confirm(`Kill ${instance}?`)) return;
    try { await api("POST", `/api/v1/runs/${encodeURIComponent(instance)}/kill`); say("Kill sent", true); }
    catch (e) { say(e.message); }
  });
  const following = new Set();
  const follow = machine => {
    following.add(machine);
    const box = document.createElement("div");
    box.innerHTML = `<h2>${esc(machine)}</h2><pre class="output" data-machine="${esc(machine)}"></pre>`;
    $("#outputs").appendChild(box);
    const pre = $("pre", box);
    const es = new EventSource(`/api/v1/runs/${encodeURIComponent(instance)}/targets/${encodeURIComponent(machine)}/output/stream`);
    es.addEventListener("output", ev => {
      const s = JSON.parse(ev.data);
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent += s.text;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
    es.addEventListener("end", () => es.close());
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) es.close(); };
    streams.push(es);
  };
  every(1000, async still => {
    let run;
    try { run = await api("GET", `/api/v1/runs/${encodeURIComponent(instance)}`); } catch (e) { return say(e.message); }
    if (!still()) return;
    $("#run-facts").innerHTML = `<dl class="facts"><dt>Job</dt><dd><a href="#/job/${encodeURIComponent(run.job)}">${esc(run.job)}</a></dd>
      <dt>Trigger</dt><dd>${esc(run.trigger)}</dd><dt>Started</dt><dd>${esc(when(run.started_at))}</dd>
      ${run.owner ? `<dt>Daemon</dt><dd id="run-owner">${esc(run.owner)}</dd>` : ""}
      <dt>Result</dt><dd id="run-result">${runBadge(run)}</dd></dl>`;
    $("#kill-all").hidden = !run.running;
    $("#targets tbody").innerHTML = run.targets.map(t => `<tr data-machine="${esc(t.machine)}">
      <td>${esc(t.machine)}${t.connections > 1 ? `<br><span class="muted reconnects" title="its wrapper connected ${t.connections} times; last to ${esc(t.connected_to || "this daemon")}">reconnected ${t.connections - 1}×${t.connected_to ? ` · ${esc(t.connected_to)}` : ""}</span>` : ""}</td>
      <td>${t.state === "running" ? `<span class="badge run">running</span>` : t.state === "maintenance" ? `<span class="badge warn">maintenance</span>` : esc(t.state)}</td>
      <td class="code">${codeBadge(t.exit_code, t.meaning)}${t.note ? `<br><span class="muted">${esc(t.note)}</span>` : ""}</td>
      <td class="hide-narrow">${esc(when(t.confirmed_at))}</td><td>${esc(duration(t.confirmed_at, t.ended_at))}</td>
      <td class="hide-narrow">${t.last_heartbeat && !t.ended_at ? esc(duration(t.last_heartbeat)) + " ago" : ""}</td>
      <td>${t.state === "running" || t.state === "expected" ? `<button class="danger kill-target" data-machine="${esc(t.machine)}">Kill</button>` : ""}</td></tr>`).join("")
      || `<tr><td colspan="7" class="muted">Waiting for Salt to name the targets…</td></tr>`;
    document.querySelectorAll(".kill-target").forEach(b => b.addEventListener("click", async () => {
      try { await api("POST", `/api/v1/runs/${encodeURIComponent(instance)}/kill?machine=${encodeURIComponent(b.dataset.machine)}`); say("Kill sent", true); }
      catch (e) { say(e.message); }
    }));
    run.targets.filter(t => t.state !== "maintenance" && !following.has(t.machine)).forEach(t => follow(t.machine));
  });
}

async function timelinePage() {
  view().innerHTML = `<h1>Timeline</h1><p class="muted">Targets' runs in the last hour: green ok, red failed, blue running.</p><div id="timeline"></div>`;
  every(5000, async still => {
    let data;
    try { data = await api("GET", "/api/v1/timeline?minutes=60"); } catch (e) { return say(e.message); }
    if (!still()) return;
    const now = Date.now(), from = now - 60 * 60000;
    const spans = new Map();
    for (const it of data.items) {
      const key = `${it.cron} · ${it.machine}`;
      if (!spans.has(key)) spans.set(key, new Map());
      const runs = spans.get(key);
      const r = runs.get(it.job_instance) || {};
      if (it.msg_type === "machine_start") r.start = Date.parse(it.timestamp);
      else { r.end = Date.parse(it.timestamp); r.code = it.ret_code; }
      runs.set(it.job_instance, r);
    }
    const pct = t => Math.max(0, Math.min(100, (t - from) / (now - from) * 100));
    $("#timeline").innerHTML = [...spans.entries()].sort().map(([who, runs]) => `<div class="timeline-row">
      <span class="who" title="${esc(who)}">${esc(who)}</span><span class="track">${[...runs.entries()].map(([inst, r]) => {
        const a = pct(r.start ?? r.end), b = pct(r.end ?? now);
        const cls = r.end === undefined ? "run" : r.code === 0 ? "ok" : "bad";
        return `<a class="bar ${cls}" href="#/run/${encodeURIComponent(inst)}" title="${esc(inst)}" data-left="${a}" data-width="${Math.max(b - a, 0.3)}"></a>`;
      }).join("")}</span></div>`).join("") || `<p class="muted">Nothing ran in the last hour.</p>`;
    // Positions through the CSSOM: the page's Content-Security-Policy allows no inline styles.
    document.querySelectorAll("#timeline .bar").forEach(bar => {
      bar.style.left = bar.dataset.left + "%";
      bar.style.width = bar.dataset.width + "%";
    });
  });
}

async function diagnosticsPage() {
  view().innerHTML = `<h1>Config</h1><div class="actions"><button id="reload">Reload now</button></div><div id="diag"></div>`;
  const page = shown;
  const show = d => {
    if (page !== shown) return;
    $("#diag").innerHTML = `<p>${d.jobs} job(s) loaded at ${esc(when(d.loaded_at))}: ${d.errors} error(s), ${d.warnings} warning(s).</p>
      <pre class="output">${esc(d.diagnostics.map(x => x.text).join("\n") || "No findings.")}</pre>`;
  };
  $("#reload").addEventListener("click", async () => {
    try { show(await api("POST", "/api/v1/reload")); say("Reloaded", true); } catch (e) { say(e.message); }
  });
  try { show(await api("GET", "/api/v1/diagnostics")); } catch (e) { say(e.message); }
}

function route() {
  clear();
  const [, page, arg] = (location.hash || "#/").split("/");
  const name = arg ? decodeURIComponent(arg) : "";
  if (page === "job" && name) jobPage(name);
  else if (page === "run" && name) runPage(name);
  else if (page === "timeline") timelinePage();
  else if (page === "diagnostics") diagnosticsPage();
  else jobsPage();
}

window.addEventListener("hashchange", route);
refreshHeader();
setInterval(refreshHeader, 5000);
route();
