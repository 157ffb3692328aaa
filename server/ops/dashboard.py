"""The coordinator's live web view (`fedsyn server dashboard`): one page and the JSON it polls.

Read-only by construction: only GET routes, no API docs, and the state comes from
:mod:`fedsyn.server.ops.dashboard_state`, which reads public artefacts only. The page is
self-contained (inline CSS, JS and SVG) because a coordinator's machine may have no
internet, and a page that loads code from a CDN would hand that CDN the view.

Only requests whose ``Host`` names the view are answered. Otherwise a web page on any site
could rebind its own name to 127.0.0.1 (DNS rebinding) and, being same-origin with the view
as far as the browser knows, read a loopback view that has no token.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.responses import Response

from fedsyn.server.ops.dashboard_state import Sources, StateReader

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Binding these listens on loopback too, so the loopback names reach the view as well.
WILDCARD = ("0.0.0.0", "::")
# A Host header: a name or IPv4 address, or a bracketed IPv6 address, then an optional port.
_HOST_HEADER = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[^:\[\]]+)(?::\d+)?")
POLL_SECONDS = 3

# Inline script and style only; no frames (clickjacking) and no referrer (a ?token= URL must not leak).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def needs_token(host: str) -> bool:
    """Anyone who can reach a non-loopback address could read the view, so it must be gated."""
    return host not in LOOPBACK


def _host_form(name: str) -> str:
    """``name`` as it appears in a Host header: lower case, an IPv6 address in brackets."""
    name = name.strip().lower()
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names a request may give in its Host header: the bind address, the loopback names
    when bound to loopback (or to every address, which includes loopback), and ``extra``."""
    names = {host, *extra}
    if host in LOOPBACK or host in WILDCARD:
        names.update(LOOPBACK)
    return frozenset(_host_form(name) for name in names)


def host_allowed(header: str, allowed: frozenset[str]) -> bool:
    """Whether a Host header names the view. Starlette's TrustedHostMiddleware cuts the header
    at the first colon, which leaves ``[`` of ``[::1]:8050``, so the header is parsed here."""
    match = _HOST_HEADER.fullmatch(header.strip().lower())
    return match is not None and match["name"] in allowed


def _token_check(token: str | None) -> Callable[[Request], None]:
    """A dependency that accepts ``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` when a token is set."""

    def check(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else request.query_params.get("token", "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(status_code=401, detail="a valid token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


def create_app(audit_log: Path, release_dir: Path, public_key: Path | None, token: str | None,
               database: Path | None = None, *, host: str = "127.0.0.1", extra_hosts: Iterable[str] = ()
               ) -> FastAPI:
    """The view over one coordinator's audit log, release folder and (optionally) SuperLink database.

    ``host`` is the address the server binds (its Host header is accepted, see :func:`allowed_hosts`);
    ``extra_hosts`` are further names browsers reach it by, e.g. the machine's DNS name.
    """
    reader = StateReader(Sources(Path(audit_log), Path(release_dir), public_key, database))
    hosts = allowed_hosts(host, extra_hosts)
    app = FastAPI(title="fedsyn coordinator", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(_token_check(token))])

    @app.middleware("http")
    async def harden(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if host_allowed(request.headers.get("host", ""), hosts):
            response = await call_next(request)
        else:
            response = PlainTextResponse("this view answers only requests addressed to its own host name",
                                         status_code=400)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace("__POLL_MS__", str(POLL_SECONDS * 1000))

    @app.get("/api/state")
    def state() -> JSONResponse:
        return JSONResponse(reader.state())

    return app


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedsyn coordinator</title><link rel="icon" href="data:,">
<style>
 :root { --ok:#1a7f37; --bad:#c62828; --warn:#b26a00; --ink:#1f2328; --mute:#656d76; --line:#d0d7de;
         --claim:#2f6fdf; --rel:#8c959f; }
 body { font: 14px/1.45 system-ui, sans-serif; color: var(--ink); margin: 0; background: #f6f8fa; }
 header { background: #fff; border-bottom: 1px solid var(--line); padding: 12px 24px; display: flex;
          gap: 24px; align-items: baseline; flex-wrap: wrap; }
 header h1 { font-size: 18px; margin: 0; }
 main { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; padding: 16px 24px; }
 section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
 section.wide { grid-column: 1 / -1; }
 h2 { font-size: 15px; margin: 0 0 8px; }
 table { border-collapse: collapse; width: 100%; }
 th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eaeef2; vertical-align: top; }
 th { color: var(--mute); font-weight: 600; font-size: 12px; }
 .num { text-align: right; font-variant-numeric: tabular-nums; }
 .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
          color: #fff; background: var(--mute); }
 .ok { background: var(--ok); } .bad { background: var(--bad); } .warn { background: var(--warn); }
 .mute { color: var(--mute); } .reason { color: var(--bad); }
 .legend span { margin-right: 14px; } .sw { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
 code { font-size: 12px; }
</style></head>
<body>
<header><h1>fedsyn coordinator</h1><span id="run" class="mute">waiting for data&hellip;</span>
 <span>audit chain: <span id="audit" class="badge">?</span></span>
 <span id="updated" class="mute"></span></header>
<main>
 <section class="wide"><h2>Sites</h2><div id="sites" class="mute">no site has joined yet</div>
  <p id="registry" class="mute"></p></section>
 <section><h2>&epsilon; spent vs budget (cumulative, per site)</h2><div id="epsilon"></div>
  <p class="legend mute">
  <span><i class="sw" style="background:var(--claim)"></i>site's own claim (audit log, live)</span>
  <span><i class="sw" style="background:var(--rel)"></i>latest release's privacy report</span>
  <span><i class="sw" style="background:var(--bad)"></i>budget asked</span></p></section>
 <section><h2>Rounds</h2><div id="timeline"></div><div id="rounds"></div></section>
 <section><h2>Quarantined updates</h2><div id="quarantine" class="mute">none</div></section>
 <section><h2>Latest release</h2><div id="release" class="mute">no release yet</div></section>
 <section class="wide"><h2>Audit log</h2><div id="auditinfo" class="mute"></div></section>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token");
const SVG = "http://www.w3.org/2000/svg";
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}
function table(headers, rows) {
  const head = el("tr", {}, ...headers.map(h => el("th", {class: h.num ? "num" : ""}, h.label || h)));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows.map(r => el("tr", {}, ...r))));
}
function td(value, cls) { return el("td", cls ? {class: cls} : {}, value); }
function fmt(x, digits) { return x == null ? "\\u2013" : Number(x).toFixed(digits == null ? 3 : digits); }
function when(iso) { return iso ? new Date(iso).toLocaleTimeString() : "\\u2013"; }
function swap(id, node) { const box = document.getElementById(id); box.replaceChildren(node); box.className = ""; }

function badge(text, cls) { return el("span", {class: "badge " + cls}, text); }

function siteStatus(site, registry) {
  if (!registry.available) return el("span", {class: "mute"}, "unknown");
  const node = (registry.nodes || []).find(n => String(n.node_id) === String(site.node_id));
  if (!node) return badge("not registered", "warn");
  return node.online ? badge("online", "ok") : badge(node.status, node.status === "registered" ? "" : "warn");
}

// One line per distinct reason, with the rounds it hit: a site that is down for 20 rounds
// gets one line, not 20.
function reasons(lines) {
  if (!lines || !lines.length) return "\\u2013";
  return el("div", {}, ...lines.map(d => el("div", {class: "reason"},
    (d.count > 1 ? "rounds " + d.rounds_text + " (" + d.count + "\\u00d7)" : "round " + d.rounds_text) +
    ": " + d.reason)));
}

// Shorten an SVG label until it fits in ``room`` (user units), ending it with an ellipsis; the
// full text stays in the tooltip (<title>) and the sites table.
function fitLabel(text, room) {
  const full = text.textContent;
  if (text.getComputedTextLength() <= room) return;
  let keep = full.length;
  while (keep > 1 && text.getComputedTextLength() > room) text.textContent = full.slice(0, --keep) + "\\u2026";
}

function renderSites(state) {
  if (!state.sites.length) return;
  const rows = state.sites.map(s => [
    td(el("div", {}, s.name, ...s.notes.map(n => el("div", {class: "reason"}, n)))),
    td(el("code", {}, s.node_id)), td(siteStatus(s, state.registry)),
    td(s.rounds_accepted.join(", ") || "\\u2013"),
    td(reasons(s.dropped_reasons)), td(reasons(s.refused_reasons)),
    td(fmt(s.epsilon_claimed), "num"), td(when(s.last_seen))]);
  swap("sites", table(["site", "node id", "SuperLink", "accepted rounds", "dropped (reason)", "refused",
                       {label: "\\u03b5 claimed", num: true}, "last seen"], rows));
  document.getElementById("registry").textContent = state.registry.available
    ? "Registration and online status: " + state.registry.message + " (Flower's node table, read-only)."
    : "Registration and online status not shown: " + state.registry.message +
      ". Everything else comes from the audit log.";
}

function renderEpsilon(state) {
  const released = {};
  for (const s of (state.release && state.release.sites) || []) released[s.node_id] = s;
  const sites = state.sites.length ? state.sites : ((state.release && state.release.sites) || []).map(
    s => ({name: s.site, node_id: s.node_id, epsilon_claimed: null}));
  if (!sites.length) return;
  // Each site's own budget: its max_epsilon as it said before the run (or as the release recorded it).
  const budgetOf = s => s.max_epsilon != null ? s.max_epsilon : (released[s.node_id] || {}).max_epsilon;
  const values = sites.flatMap(s => [s.epsilon_claimed, (released[s.node_id] || {}).epsilon_cumulative,
                                     budgetOf(s)]);
  const top = Math.max(...values.filter(v => v != null), 0) * 1.1 || 1;
  const left = 110, width = 360, band = 34, height = sites.length * band + 28;
  const chart = svg("svg", {viewBox: `0 0 ${left + width + 60} ${height}`, width: "100%", role: "img",
                            "aria-label": "epsilon per site"});
  const x = v => left + width * v / top;
  const labels = [];
  sites.forEach((s, i) => {
    const y = 6 + i * band;
    const label = svg("text", {x: left - 8, y: y + 17, "text-anchor": "end", "font-size": 12, class: "label"},
                      s.name);
    const group = svg("g", {});
    group.append(svg("title", {}, s.name + " (node " + s.node_id + ")"), label);
    chart.append(group);
    labels.push(label);
    const bars = [[s.epsilon_claimed, "var(--claim)", 0], [(released[s.node_id] || {}).epsilon_cumulative,
                  "var(--rel)", 13]];
    for (const [v, colour, dy] of bars) {
      if (v == null) continue;
      chart.append(svg("rect", {x: left, y: y + dy, width: Math.max(1, x(v) - left), height: 11, fill: colour}));
      chart.append(svg("text", {x: x(v) + 4, y: y + dy + 10, "font-size": 11, fill: "#444"}, fmt(v)));
    }
    const budget = budgetOf(s);
    if (budget != null) chart.append(svg("line", {x1: x(budget), x2: x(budget), y1: y - 2, y2: y + 26,
                                                  stroke: "var(--bad)", "stroke-dasharray": "4 3", "stroke-width": 2}));
  });
  chart.append(svg("line", {x1: left, x2: left, y1: 0, y2: height - 22, stroke: "#999"}));
  chart.append(svg("text", {x: left, y: height - 6, "font-size": 11, fill: "var(--bad)"},
                            "dashed: each site's max_epsilon"));
  swap("epsilon", chart);
  for (const label of labels) fitLabel(label, left - 12);  // measured once laid out
}

function renderRounds(state) {
  if (!state.rounds.length) return;
  const most = Math.max(1, ...state.rounds.map(r => (r.accepted || 0) + (r.dropped || 0)));
  const step = 28, height = 90, chart = svg("svg", {viewBox: `0 0 ${state.rounds.length * step + 10} ${height}`,
                                                   height: height, role: "img", "aria-label": "rounds"});
  state.rounds.forEach((r, i) => {
    const scale = (height - 24) / most, x = 6 + i * step;
    let y = height - 16;
    for (const [n, colour] of [[r.accepted || 0, "var(--ok)"], [r.dropped || 0, "var(--bad)"]]) {
      y -= n * scale;
      if (n) chart.append(svg("rect", {x: x, y: y, width: step - 8, height: n * scale, fill: colour}));
    }
    if (!r.finished && r.round > 0) chart.append(svg("rect", {x: x, y: 4, width: step - 8, height: height - 20,
                                                  fill: "none", stroke: "var(--warn)", "stroke-dasharray": "3 2"}));
    chart.append(svg("text", {x: x + (step - 8) / 2, y: height - 3, "text-anchor": "middle", "font-size": 10},
                     r.round));
  });
  swap("timeline", chart);
  const rows = state.rounds.map(r => [
    td(r.round === 0 ? "0 (marginals)" : r.round), td(when(r.started)),
    td(r.round === 0 ? "\\u2013" : (r.finished ? when(r.finished) : badge("running", "warn"))),
    td(r.accepted, "num"), td(r.dropped, "num"), td(r.quarantined.length, "num")]);
  document.getElementById("rounds").replaceChildren(table(["round", "started", "finished",
    {label: "accepted", num: true}, {label: "dropped", num: true}, {label: "quarantined", num: true}], rows));
  const bad = state.rounds.flatMap(r => r.quarantined.map(q => [td(r.round), td(q.site), td(q.reason, "reason")]));
  if (bad.length) swap("quarantine", table(["round", "site", "reason"], bad));
}

function renderRelease(state) {
  const r = state.release;
  if (!r) return;
  const facts = table(["", ""], [
    [td("path"), td(el("code", {}, r.path))], [td("written by run"), td(r.run || "\\u2013")],
    [td("rows"), td(r.rows)],
    [td("signed"), td(r.signed ? badge(r.signature, r.signature === "verified" ? "ok" :
                     (r.signature.startsWith("does not") ? "bad" : "")) : badge("not signed", "warn"))],
    [td("mean total variation"), td(fmt(r.mean_total_variation, 4))],
    [td("max \\u03b5 any site"), td(fmt(r.max_epsilon_any_site))]]);
  const sites = table(["site", {label: "\\u03b5 cumulative", num: true}, {label: "\\u03b5 this run", num: true},
                       {label: "\\u03b4", num: true}, {label: "budget", num: true}, {label: "rounds", num: true},
                       {label: "dropped", num: true}],
    r.sites.map(s => [td(s.site), td(fmt(s.epsilon_cumulative), "num"),
                      td((s.epsilon_this_run_is_lower_bound ? "\\u2265 " : "") + fmt(s.epsilon_this_run), "num"),
                      td(s.delta, "num"), td(s.budget_epsilon_asked, "num"), td(s.rounds_accepted, "num"),
                      td(s.dropped, "num")]));
  const notes = [];
  if (r.note) notes.push(el("p", {}, badge("earlier release", "warn"), " " + r.note + "."));
  for (const p of r.passed_over || [])
    notes.push(el("p", {class: "reason"}, "passed over ", el("code", {}, p.path), ": " + p.why));
  swap("release", el("div", {}, ...notes, facts, el("p", {}), sites));
}

function render(state) {
  const run = state.run;
  document.getElementById("run").textContent = run ? `run ${run.run || ""} started ${when(run.started)} \\u00b7 ` +
    `${run.rounds} rounds \\u00b7 \\u03b5 ${run.epsilon} per run per site \\u00b7 min ${run.min_sites} sites \\u00b7 ` +
    `${run.aggregation}` + (run.stopped_after != null ? ` \\u00b7 training stopped after round ${run.stopped_after}` +
    " (fewer than min-sites could go on)" : "") + (run.finished ? " \\u00b7 finished" : run.failed ?
    ` \\u00b7 stopped: ${run.failed.reason}` + (run.failed.resumable ? " (`fedsyn server run --resume` goes on)" : "")
    : " \\u00b7 in progress")
    : "no run in the audit log yet";
  const a = state.audit, audit = document.getElementById("audit");
  audit.textContent = a.ok === true ? "OK" : a.ok === false ? "BROKEN" : "no log";
  audit.className = "badge " + (a.ok === true ? "ok" : a.ok === false ? "bad" : "");
  document.getElementById("auditinfo").textContent = `${state.audit_log}: ${a.message}` +
    (a.entries != null ? ` (${a.entries} entries)` : "");
  renderSites(state); renderEpsilon(state); renderRounds(state); renderRelease(state);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function poll() {
  try {
    const response = await fetch("api/state", {headers: token ? {Authorization: "Bearer " + token} : {},
                                               cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (error) {
    document.getElementById("updated").textContent = "cannot reach the coordinator (" + error.message + ")";
  }
}
poll();
setInterval(poll, __POLL_MS__);
</script></body></html>
"""
