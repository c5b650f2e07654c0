// engram's web console: plain JavaScript, no build step, nothing fetched but this
// gateway's own API. Everything shown is untrusted (payloads, ids, metadata): it is set
// as text (textContent, DOM nodes), never as markup, and control characters (terminal
// escapes) and bidirectional overrides are shown as visible escapes.

const $ = (selector, root = document) => root.querySelector(selector);
const KEY = "engram.token";
const FEED_ROWS = 500;
const HEARTBEAT = 5;  // seconds: how soon the page hears that the daemon went away
const STREAM_KINDS = ["unit.created", "context.created", "context.updated", "lock.acquired",
  "lock.renewed", "lock.released", "lock.expired"];

// -- text -------------------------------------------------------------------------------

// C0 and C1 controls (terminal escapes), and every character that reorders or hides
// text: bidirectional marks, embeddings, overrides and isolates (U+061C, U+200E/F,
// U+202A-E, U+2066-9), zero-width ones, line and paragraph separators, the BOM.
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;

/** Untrusted text made visible: control characters as \xNN / \uNNNN. */
export function clean(value) {
  return String(value ?? "").replace(UNSAFE, (c) => {
    const code = c.charCodeAt(0);
    return code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0")
      : "\\u" + code.toString(16).padStart(4, "0");
  });
}

function short(text, length = 160) {
  const line = clean(text).replace(/\s+/g, " ").trim();
  return line.length > length ? line.slice(0, length - 1) + "…" : line;
}

/** An element: attributes (strings only), children (nodes, or text set as text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "href") node.setAttribute("href", "#" + String(value).replace(/^#/, ""));
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(clean(child)));
  }
  return node;
}

/** A name that may be very long (an agent id, a resource): one line, cut with an
 * ellipsis by the style, whole in its title. */
function clipped(text) {
  return el("span", { class: "name", title: clean(text) }, text);
}

function unitLink(id, text) {
  return el("a", { href: "unit/" + encodeURIComponent(id) }, text ?? String(id).slice(-8));
}

function ago(when, now = Date.now()) {
  if (!when) return "—";
  const seconds = Math.max(0, Math.round((now - new Date(when).getTime()) / 1000));
  return duration(seconds);
}

function duration(seconds) {
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor(seconds % 3600 / 60) + " min";
  return Math.floor(seconds / 86400) + " d";
}

function clock(when) {
  const date = new Date(when);
  return isNaN(date) ? "" : date.toLocaleTimeString([], { hour12: false });
}

function fill(tbody, rows, emptyNote) {
  tbody.replaceChildren(...rows);
  const note = emptyNote ?? tbody.closest(".panel")?.querySelector(".empty");
  if (note) note.hidden = rows.length > 0;
}

function payloadOf(unit) {
  if (!unit) return "";
  if (unit.payload !== undefined && unit.payload !== null) return unit.payload;
  return unit.payload_base64 ? "(binary, " + Math.floor(unit.payload_base64.length * 3 / 4) + " bytes)" : "";
}

// -- the API ----------------------------------------------------------------------------

class Unauthorized extends Error {}

function token() { return sessionStorage.getItem(KEY) || ""; }

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    signIn(await reason(response));
    throw new Unauthorized("unauthenticated");
  }
  if (!response.ok) throw new Error(await reason(response));
  return response.json();
}

async function reason(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch { return response.status + " " + response.statusText; }
}

function toast(message) {
  const box = $("#toast");
  box.textContent = clean(message);
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

function report(error) {
  if (!(error instanceof Unauthorized)) toast(String(error.message || error));
}

// -- signing in -------------------------------------------------------------------------

let signedOut = false;

function signIn(message) {
  signedOut = true;
  current = null;  // (no view is shown: nothing refreshes, nothing is asked)
  stream.stop();
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  // Nothing read before stays on the page.
  for (const body of document.querySelectorAll("tbody, ol, #threads, #timeline, #unit-trace, #unit-fields"))
    body.replaceChildren();
  timeline.reset();
  $("#login").hidden = false;
  $("#login-error").textContent = token() ? clean(message || "") : "";
  setStatus("signed-out", "not signed in");
  $("#token").focus();
}

$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("#token").value.trim());
  $("#token").value = "";
  signedOut = false;
  $("#login").hidden = true;
  start();
});

$("#signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  signIn("");
});

function setStatus(state, text) {
  const status = $("#status");
  status.dataset.state = state;
  status.textContent = text;
}

// -- the live stream --------------------------------------------------------------------

/** One Server-Sent Events stream of every event this caller may see, opened with a
 * single-use ticket and reopened after any error from after the last event it gave
 * (a gateway or daemon restart loses and repeats nothing). */
class Stream {
  constructor() {
    this.after = null;
    this.listeners = [];
    this.source = null;
    this.retry = 500;
    this.timer = null;
  }

  on(listener) { this.listeners.push(listener); }

  stop() {
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
  }

  async open() {
    this.stop();
    let ticket;
    try {
      ticket = (await api("/stream/ticket", { method: "POST" })).ticket;
    } catch (error) {
      if (error instanceof Unauthorized) return;
      return this.again();
    }
    if (signedOut) return;
    const query = new URLSearchParams({ ticket, heartbeat: String(HEARTBEAT) });
    if (this.after !== null) query.set("after", String(this.after));
    const source = new EventSource("/stream-sse?" + query);
    this.source = source;
    source.onopen = () => { this.retry = 500; setStatus("live", "live"); };
    const take = (message) => {
      const seq = Number(message.lastEventId);
      if (this.after !== null && seq <= this.after) return;  // (never twice)
      this.after = seq;
      const event = JSON.parse(message.data);
      for (const listener of this.listeners) {
        try { listener(event); } catch (error) { console.warn(error); }
      }
    };
    for (const kind of STREAM_KINDS) source.addEventListener(kind, take);
    source.addEventListener("heartbeat", (message) => {
      const beat = JSON.parse(message.data);
      if (typeof beat.cursor === "number" && (this.after === null || beat.cursor > this.after))
        this.after = beat.cursor;
      // The gateway is here, the daemon may not be: the stream waits for it then.
      if (beat.daemon === "away") setStatus("away", "daemon away");
      else setStatus("live", "live");
    });
    source.onerror = () => {
      if (this.source !== source) return;
      source.close();
      this.again();
    };
  }

  again() {
    if (signedOut) return;
    setStatus("reconnecting", "reconnecting…");
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), this.retry);
    this.retry = Math.min(this.retry * 2, 5000);
  }
}

const stream = new Stream();

/** Call *fn* soon after a call, then at most once per *wait* ms however often it is
 * called: a steady stream of events still refreshes the view every *wait* ms (a
 * debounce, waiting for a quiet moment, would never refresh it in a busy stretch). A
 * call while *fn* runs (it may return a promise) brings one more run after it. */
function throttle(fn, wait) {
  let queued = false, running = false, last = -Infinity;
  const run = async () => {
    queued = false;
    running = true;
    try { await fn(); } catch (error) { report(error); } finally {
      running = false;
      last = Date.now();
      if (queued) later();
    }
  };
  const later = () => setTimeout(run, Math.max(0, last + wait - Date.now()));
  return () => {
    if (queued) return;
    queued = true;
    if (!running) later();
  };
}

// -- views ------------------------------------------------------------------------------

const views = {};
let current = null;

function route() {
  if (signedOut) return;
  let hash = location.hash.replace(/^#/, "");
  try {
    hash = decodeURIComponent(hash) || "now";
  } catch {
    hash = "now";  // (a malformed escape: the default view)
  }
  const [name, ...rest] = hash.split("/");
  const view = views[name] ? name : "now";
  for (const section of document.querySelectorAll(".view"))
    section.hidden = section.id !== "view-" + view;
  for (const link of document.querySelectorAll("nav a"))
    link.toggleAttribute("aria-current", link.dataset.view === view);
  current = view;
  document.title = "engram · " + view;
  Promise.resolve(views[view].show(rest.join("/"))).catch(report);
}

window.addEventListener("hashchange", route);

// The skip link goes to the view shown (its heading), not to a view of its own: its
// href (#main) would be read as a route, and Now shown instead.
$(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  const section = current ? $("#view-" + current) : $("#login:not([hidden])");
  const target = (section && section.querySelector("h1")) || $("#main");
  target.setAttribute("tabindex", "-1");
  target.focus();
});

document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input, select, textarea, dialog");
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const links = [...document.querySelectorAll("nav a")];
  const index = Number(event.key) - 1;
  if (index >= 0 && index < links.length) {
    location.hash = links[index].getAttribute("href");
    event.preventDefault();
  } else if (event.key === "/") {
    location.hash = "#search";
    setTimeout(() => $("#search-form [name=query]").focus(), 0);
    event.preventDefault();
  } else if (event.key === "p" && current === "feed") {
    $("#pause").click();
  }
});

// Now: agents and sessions, leases and their queues, claimed tasks.

views.now = {
  async show() { await this.refresh(); },
  async refresh() {
    const [agents, locks, tasks] = await Promise.all([
      api("/agents"), api("/locks"), api("/tasks?state=claimed&limit=200")]);
    const now = Date.now();
    fill($("#agents tbody"), agents.agents.map((agent) => el("tr", {},
      el("th", { scope: "row" }, clipped(agent.agent)),
      el("td", {}, agent.sessions.length ? el("ul", { class: "sessions" },
        agent.sessions.map((s) => el("li", { class: s.gone_at ? "gone" : "live" },
          el("span", { class: "badge" }, s.gone_at ? "gone" : "live"), " ",
          s.harness || "process", " · pid " + s.pid,
          " · seen " + ago(s.gone_at || s.last_seen, now) + " ago"))) : "—"),
      el("td", { class: "num" }, agent.leases),
      el("td", { class: "num" }, agent.unread),
      el("td", {}, agent.last_seen ? ago(agent.last_seen, now) + " ago" : "—"))));
    const rows = [];
    for (const state of locks.locks) {
      const leases = state.leases && state.leases.length ? state.leases : (state.lease ? [state.lease] : []);
      for (const lease of leases) {
        const left = Math.max(0, Math.round((new Date(lease.expires_at) - now) / 1000));
        const queue = state.waiters.length ? el("ol", { class: "queue" },
          state.waiters.map((w) => el("li", {}, clipped(w.agent), w.pid ? " (pid " + w.pid + ")" : ""))) : "—";
        // Breaking is an admin's act: a gateway that asks for tokens lets in agents only,
        // and refuses it (SPECS §6.3), so a signed-in page offers no button for it.
        let breaker = "—";
        if (!token()) {
          breaker = el("button", { type: "button", class: "danger small",
            "aria-label": "Break the lease on " + clean(lease.resource) }, "Break…");
          breaker.addEventListener("click", () => confirmBreak(lease));
        }
        // (Each cell names its column: at a phone's width a row is a card of labelled lines.)
        rows.push(el("tr", { "data-resource": lease.resource },
          el("th", { scope: "row", class: "resource" }, clipped(lease.resource)),
          el("td", { "data-label": "Holder" }, clipped(lease.holder)),
          el("td", { class: "num", "data-label": "Age" }, ago(lease.acquired_at, now)),
          el("td", { class: "num", "data-label": "Left" }, duration(left)),
          el("td", { class: "num", "data-label": "Token" }, lease.fencing_token),
          el("td", { "data-label": "Queue" }, queue), el("td", { class: "actions" }, breaker)));
      }
    }
    fill($("#leases tbody"), rows);
    fill($("#claimed tbody"), tasks.tasks.map((task) => el("tr", {},
      el("th", { scope: "row" }, unitLink(task.id, short(task.title, 80))),
      el("td", {}, task.claim ? clipped(task.claim.holder) : "—"),
      el("td", {}, task.claim ? ago(task.claim.acquired_at, now) + " ago" : "—"),
      el("td", {}, clipped(task.context_id)))));
  },
};
const refreshNow = throttle(() => current === "now" && views.now.refresh(), 500);
stream.on((event) => {
  if (event.kind.startsWith("lock.") || event.kind === "context.updated" ||
      (event.kind === "unit.created" && event.unit.type === "TASK_STATUS")) refreshNow();
});
setInterval(() => { if (!signedOut && current === "now" && !document.hidden) refreshNow(); }, 2000);

async function confirmBreak(lease) {
  const dialog = $("#confirm");
  $("#confirm-what").textContent = clean(lease.resource) + " — held by " + clean(lease.holder) +
    ", fencing token " + lease.fencing_token;
  $("#confirm-reason").value = "";
  dialog.showModal();
  $("#confirm-reason").focus();
  const answer = await new Promise((resolve) => {
    $("#confirm-cancel").onclick = () => { dialog.close(); resolve(null); };
    dialog.onclose = () => resolve(dialog.returnValue === "break" ? $("#confirm-reason").value : null);
    $("#confirm-form").onsubmit = (event) => {
      event.preventDefault();
      const reasonGiven = $("#confirm-reason").value.trim();
      if (!reasonGiven) return;
      dialog.close("break");
    };
  });
  if (!answer) return;
  try {
    // The lease shown, by its lock id: if its holder let go meanwhile and another took
    // the resource, the gateway refuses (409) rather than end a lease no one was shown.
    await api("/locks/break", { method: "POST",
      body: { resource: lease.resource, reason: answer.trim(), lock_id: lease.lock_id } });
    toast("Broken: " + lease.resource);
    refreshNow();
  } catch (error) { report(error); }
}

// Feed: every event as it comes, filtered, paused at will.

const feed = { paused: false, held: [], heldCount: 0, seen: new Set(), filled: false };

function feedRow(event) {
  const unit = event.unit;
  const lease = event.lease;
  let agent = "", type = "", what = "";
  if (unit) {
    agent = unit.agent_id; type = unit.type; what = short(payloadOf(unit));
  } else if (lease) {
    agent = event.by || lease.holder;
    what = lease.resource + (event.reason ? " (" + event.reason + ")" : "") +
      " · token " + lease.fencing_token;
  } else if (event.context) {
    what = event.context.display_name || event.context.id || "";
  }
  const row = el("tr", { "data-seq": event.seq, "data-kind": event.kind,
      "data-context": event.context_id, "data-agent": agent, "data-type": type },
    el("td", { class: "num" }, unit ? unitLink(unit.id, String(event.seq)) : String(event.seq)),
    el("td", {}, clock(event.ts)), el("td", {}, el("span", { class: "kind" }, event.kind)),
    el("td", {}, clipped(event.context_id)), el("td", {}, clipped(agent)), el("td", {}, type),
    el("td", { class: "what" }, what));
  row.hidden = !feedShows(row);
  return row;
}

function feedFilters() {
  const form = $("#feed-filters");
  return { context: form.context.value.trim(), agent: form.agent.value.trim(),
    type: form.type.value.trim(), kind: form.kind.value };
}

function feedShows(row, filters = feedFilters()) {
  const has = (field, wanted) => !wanted || (row.dataset[field] || "").includes(wanted);
  return has("context", filters.context) && has("agent", filters.agent) &&
    has("type", filters.type) && (!filters.kind || row.dataset.kind.startsWith(filters.kind));
}

function feedAdd(events) {
  const body = $("#feed tbody");
  const rows = [];
  for (const event of events) {
    if (feed.seen.has(event.seq)) continue;
    feed.seen.add(event.seq);
    rows.push(feedRow(event));
  }
  if (!rows.length) return;
  rows.sort((a, b) => Number(b.dataset.seq) - Number(a.dataset.seq));
  for (const row of rows.splice(FEED_ROWS)) feed.seen.delete(Number(row.dataset.seq));
  // Newest first; an event older than the newest shown goes in its place.
  for (const row of rows) {
    const seq = Number(row.dataset.seq);
    let before = body.firstElementChild;
    while (before && Number(before.dataset.seq) > seq) before = before.nextElementSibling;
    body.insertBefore(row, before);
  }
  while (body.childElementCount > FEED_ROWS) {
    feed.seen.delete(Number(body.lastElementChild.dataset.seq));
    body.lastElementChild.remove();
  }
}

stream.on((event) => {
  if (feed.paused) {
    // Only what the feed could show is held: a pause through a flood keeps its newest.
    feed.held.push(event);
    feed.heldCount += 1;
    if (feed.held.length > 2 * FEED_ROWS) feed.held.splice(0, feed.held.length - FEED_ROWS);
    $("#pending").textContent = feed.heldCount + " new while paused";
  } else feedAdd([event]);
});

$("#pause").addEventListener("click", () => {
  feed.paused = !feed.paused;
  const button = $("#pause");
  button.textContent = feed.paused ? "Resume" : "Pause";
  button.setAttribute("aria-pressed", String(feed.paused));
  if (!feed.paused) {
    feedAdd(feed.held.splice(0));
    feed.heldCount = 0;
    $("#pending").textContent = "";
  }
});

$("#feed-filters").addEventListener("input", () => {
  const filters = feedFilters();
  for (const row of $("#feed tbody").children) row.hidden = !feedShows(row, filters);
});
$("#feed-filters").addEventListener("submit", (event) => event.preventDefault());

/** The feed's start: the newest 200 units whatever their context, as the events they were (a
 * search without words lists units newest first, across contexts, in one request). */
async function backfill() {
  const page = await api("/search", { method: "POST",
    body: { query: "", mode: "keyword", limit: 200 } });
  feedAdd(page.hits.filter((hit) => hit.unit).map(({ unit }) => ({
    kind: "unit.created", seq: unit.seq, ts: unit.ts, context_id: unit.context_id, unit })));
}

views.feed = {
  async show() {
    if (!feed.filled) { await backfill(); feed.filled = true; }
  },
};

// Tasks: a board.

views.tasks = {
  async show() { await this.refresh(); },
  async refresh() {
    const tasks = (await api("/tasks?limit=500")).tasks;
    const titles = new Map(tasks.map((t) => [t.id, t.title]));
    const now = Date.now();
    const card = (task) => el("li", { class: "card p" + task.priority, "data-task": task.id },
      el("div", { class: "title" }, unitLink(task.id, short(task.title, 100))),
      el("div", { class: "meta" }, el("span", { class: "badge" }, "P" + task.priority), " ",
        task.context_id, " · by " + clean(task.created_by)),
      task.depends_on.length ? el("div", { class: "deps" }, "after: ",
        task.depends_on.map((id, i) => [i ? ", " : "",
          el("span", { class: task.open_dependencies.includes(id) ? "open" : "met" },
            short(titles.get(id) || id.slice(-8), 40))])) : null,
      task.claim ? el("div", { class: "claim" }, "claimed by " + clean(task.claim.holder) +
        " · " + ago(task.claim.acquired_at, now) + " ago") : null,
      task.state === "done" && task.done_by ? el("div", { class: "claim" }, "done by " + clean(task.done_by)) : null);
    const column = (id, list) => {
      $(id).replaceChildren(...list.map(card));
      if (!list.length) $(id).append(el("li", { class: "empty" }, "none"));
    };
    column("#tasks-ready", tasks.filter((t) => t.state === "open" && !t.open_dependencies.length));
    column("#tasks-blocked", tasks.filter((t) => t.state === "open" && t.open_dependencies.length));
    column("#tasks-claimed", tasks.filter((t) => t.state === "claimed"));
    column("#tasks-done", tasks.filter((t) => t.state === "done").slice(0, 50));
  },
};
const refreshTasks = throttle(() => current === "tasks" && views.tasks.refresh(), 500);
stream.on((event) => {
  if ((event.kind === "unit.created" && event.unit.type === "TASK_STATUS") ||
      (event.kind.startsWith("lock.") && event.lease.resource.startsWith("task:"))) refreshTasks();
});

// Messages: threads, acknowledgements per recipient.

views.messages = {
  async show() { await this.refresh(); },
  async refresh() {
    const context = $("#messages-form").context.value.trim() || "messages";
    // (Asked whether the context is there first: a 404 would be a console error.)
    const found = await api("/contexts?limit=1&prefix=" + encodeURIComponent(context));
    const units = found.contexts.some((c) => c.id === context)
      ? (await api("/workunits/" + encodeURIComponent(context) + "?type=MESSAGE&limit=500")).units : [];
    // (The page comes oldest first: the newest 500, in the journal's order.)
    const acks = new Map();
    const threads = new Map();
    const threadOf = new Map();  // message id -> its thread's key
    const latest = new Map();  // thread key -> the seq of its latest message or acknowledgement
    for (const unit of units) {
      const meta = unit.meta || {};
      if (meta.ack) {
        if (!acks.has(meta.ack)) acks.set(meta.ack, new Map());
        acks.get(meta.ack).set(unit.agent_id, unit.ts);
        const acked = threadOf.get(meta.ack);
        if (acked !== undefined) latest.set(acked, Math.max(latest.get(acked), unit.seq));
        continue;
      }
      const key = meta.thread || unit.id;
      if (!threads.has(key)) threads.set(key, []);
      threads.get(key).push(unit);
      threadOf.set(unit.id, key);
      latest.set(key, Math.max(latest.get(key) ?? 0, unit.seq));
    }
    // Latest activity first: a reply or an acknowledgement brings its thread to the top.
    const ordered = [...threads.entries()].sort((a, b) => latest.get(b[0]) - latest.get(a[0]));
    $("#threads").replaceChildren(...ordered.slice(0, 100).map(([key, messages]) =>
      el("article", { class: "thread" },
        el("h2", {}, messages[0].meta.thread ? "Thread " + short(key, 60) : "Message " + key.slice(-8),
          el("span", { class: "count" }, " · " + messages.length + " message" + (messages.length > 1 ? "s" : ""))),
        el("ol", {}, messages.map((m) => {
          const to = (m.meta.to || "").split(",").filter(Boolean);
          const acked = acks.get(m.id) || new Map();
          return el("li", { class: "message", "data-unit": m.id },
            el("div", { class: "meta" }, el("strong", {}, m.agent_id), " → " + clean(to.join(", ")),
              " · " + clock(m.ts) + " · ", unitLink(m.id)),
            el("p", { class: "body" }, short(payloadOf(m), 2000)),
            m.meta.ack_required === "true" ? el("ul", { class: "acks" }, to.map((r) =>
              el("li", { class: acked.has(r) ? "acked" : "pending" },
                (acked.has(r) ? "✓ " : "… ") + clean(r) +
                (acked.has(r) ? " acknowledged " + clock(acked.get(r)) : " not acknowledged")))) : null);
        })))));
    if (!ordered.length) $("#threads").append(el("p", { class: "empty" }, "No messages in " + context + "."));
  },
};
$("#messages-form").addEventListener("submit", (event) => {
  event.preventDefault();
  views.messages.refresh().catch(report);
});
const refreshMessages = throttle(() => current === "messages" && views.messages.refresh(), 500);
stream.on((event) => {
  if (event.kind === "unit.created" && event.unit.type === "MESSAGE") refreshMessages();
});

// Search, with highlighted snippets; a unit's page with its causal trace.

const ELLIPSIS = "…";  // (what the daemon puts where it cut a snippet)

/** A snippet with its matches as <mark> elements. The daemon marks each match with
 * "**", which the text may hold too (Markdown's bold): the snippet is read against the
 * unit's payload, and a "**" the payload has at that place is text. Without the
 * payload (or where the two cannot be read together), every "**" is a mark. */
function highlighted(snippet, text) {
  const parts = typeof text === "string" ? readAgainst(snippet, text) : null;
  const shown = parts || snippet.split("**").map((part, i) => [part, i % 2 === 1]);
  return shown.map(([part, marked]) => (marked ? el("mark", {}, part)
    : document.createTextNode(clean(part))));
}

/** [text, marked] parts of *snippet* as a passage of *text* with marks put in; null
 * when it is not one. */
function readAgainst(snippet, text) {
  let body = snippet, head = "", tail = "";
  if (body.startsWith(ELLIPSIS)) { head = ELLIPSIS; body = body.slice(1); }
  if (body.endsWith(ELLIPSIS)) { tail = ELLIPSIS; body = body.slice(0, -1); }
  const first = body.replace(/^\*\*/, "")[0];
  let tries = 0;
  for (let j = 0; j < text.length && tries < 5000; j++) {
    if (head === "" && j > 0) break;  // (not cut at its start: it is the text's start)
    if (text[j] !== body[0] && text[j] !== first) continue;
    tries += 1;
    const parts = walk(body, text, j);
    if (parts) {
      if (head) parts.unshift([head, false]);
      if (tail) parts.push([tail, false]);
      return parts;
    }
  }
  return null;
}

function walk(body, text, j) {
  const parts = [];
  let part = "", marked = false;
  for (let i = 0; i < body.length;) {
    // A mark where the text has none; and a match in the text's own stars ("**word**":
    // "****word****") closes before the stars that follow it.
    const closes = marked && body.startsWith("****", i) && !text.startsWith("****", j);
    if (body.startsWith("**", i) && (!text.startsWith("**", j) || closes)) {
      parts.push([part, marked]);
      part = ""; marked = !marked; i += 2;
    } else if (body.startsWith("**", i)) {
      part += "**"; i += 2; j += 2;
    } else if (body[i] === text[j]) {
      part += body[i]; i += 1; j += 1;
    } else return null;
  }
  parts.push([part, marked]);
  return marked ? null : parts.filter(([p]) => p);
}

views.search = { show() {} };
$("#search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const body = { query: form.query.value, mode: form.mode.value, limit: 50 };
  if (form.context.value.trim()) body.contexts = [form.context.value.trim()];
  try {
    const page = await api("/search", { method: "POST", body });
    $("#search-total").textContent = page.total + " found";
    $("#hits").replaceChildren(...page.hits.map((hit) => el("li", { class: "hit" },
      el("div", { class: "meta" }, unitLink(hit.unit_id, hit.unit ? hit.unit.type : hit.unit_id.slice(-8)),
        hit.unit ? " · " + clean(hit.unit.context_id) + " · " + clean(hit.unit.agent_id) + " · " + clock(hit.unit.ts) : "",
        hit.score !== null ? " · score " + hit.score.toFixed(2) : ""),
      el("p", { class: "snippet" }, hit.snippet ? highlighted(hit.snippet, hit.unit && hit.unit.payload)
        : short(payloadOf(hit.unit))))));
  } catch (error) { report(error); }
});

views.unit = {
  showing: null,
  async show(id) {
    // Nothing of the unit shown before stays while this one is asked for (or missing),
    // and what comes for it late (its trace) is not shown over this one.
    const asked = Symbol(id);
    this.showing = asked;
    const still = () => this.showing === asked && current === "unit";
    $("#unit-title").textContent = "Unit " + clean(id);
    for (const part of ["#unit-fields", "#unit-trace"]) $(part).replaceChildren();
    $("#unit-payload").textContent = "";
    let unit;
    try {
      unit = await api("/workunit/" + encodeURIComponent(id));
    } catch (error) {
      if (!still()) return;
      if (!(error instanceof Unauthorized))
        $("#unit-title").textContent = "No unit " + clean(id) + ": " + clean(error.message);
      throw error;
    }
    if (!still()) return;
    $("#unit-title").textContent = "Unit " + clean(unit.id);
    const fields = [["seq", unit.seq], ["context", unit.context_id], ["agent", unit.agent_id],
      ["type", unit.type], ["written", new Date(unit.ts).toLocaleString()], ["process", unit.pid]];
    for (const [key, value] of Object.entries(unit.meta || {})) fields.push(["meta " + key, value]);
    $("#unit-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
    $("#unit-payload").textContent = clean(payloadOf(unit));
    const related = await api("/search/relationships", { method: "POST",
      body: { unit_id: unit.id, direction: "both", depth: 4 } });
    if (still()) $("#unit-trace").replaceChildren(trace(related));
  },
};

/** The units around a root as two trees: what it follows from (its relationships,
 * outward) and what follows from it (units pointing at it). */
function trace(related) {
  const units = new Map(related.units.map((u) => [u.id, u]));
  const out = new Map(), into = new Map();
  for (const edge of related.edges) {
    if (!out.has(edge.source)) out.set(edge.source, []);
    out.get(edge.source).push(edge);
    if (!into.has(edge.target)) into.set(edge.target, []);
    into.get(edge.target).push(edge);
  }
  const label = (id, type) => {
    const unit = units.get(id);
    return el("span", { class: "node" }, type ? el("span", { class: "rel" }, type) : null, " ",
      unitLink(id, unit ? unit.type + " " + id.slice(-8) : id.slice(-8)),
      unit ? " · " + clean(unit.agent_id) + " · " + short(payloadOf(unit), 80) : "");
  };
  const grow = (id, edges, next, seen) => {
    const children = (edges.get(id) || []).filter((e) => !seen.has(next(e)));
    if (!children.length) return null;
    return el("ul", {}, children.map((e) => {
      const child = next(e);
      seen.add(child);
      return el("li", {}, label(child, e.type), grow(child, edges, next, seen));
    }));
  };
  const root = related.root;
  const up = grow(root, out, (e) => e.target, new Set([root]));
  const down = grow(root, into, (e) => e.source, new Set([root]));
  return el("div", {},
    el("h3", {}, "It follows from"), up || el("p", { class: "empty" }, "nothing recorded"),
    el("ul", { class: "root" }, el("li", {}, label(root, "this"))),
    el("h3", {}, "What follows from it"), down || el("p", { class: "empty" }, "nothing yet"));
}

// Timeline: each agent's units, leases and claims over the last hour or day.

const DAY = 86400000;
const TIMELINE_UNITS = 2000;   // units of a window read from the gateway, at most (newest)
const HISTORY_CHANGES = 10000; // lease changes of a window read from the journal, at most
const HISTORY_PAGE = 1000;
const KEPT_UNITS = 5000;       // units kept in memory (read, then seen live), at most

/** What the Timeline draws, kept across refreshes: the window read from the gateway once
 * (units by a search without words, newest first across every context; past leases from
 * the journal's lease history, GET /lock-history), and what the stream brings since the
 * page opened. A refresh asks only for the leases held now and their queues. */
const timeline = {
  units: new Map(),  // unit id -> {id, ts, type, agent, context, text}
  spans: new Map(),  // lock id -> {lease, start, end}
  from: null,        // (ms) the start of the window read so far; null: nothing read
  unitsFrom: null,   // (ms) when capped: the oldest unit read (older ones not drawn)
  historyTo: null,   // (ms) when capped: the last lease change read
  reset() {
    this.units.clear(); this.spans.clear();
    this.from = this.unitsFrom = this.historyTo = null;
  },
};

function keepUnit(unit) {
  timeline.units.set(unit.id, { id: unit.id, ts: unit.ts, type: unit.type, agent: unit.agent_id,
    context: unit.context_id, text: short(payloadOf(unit), 80) });
}

function keepLeaseChange(event) {
  const lease = event.lease;
  const known = timeline.spans.get(lease.lock_id) || { lease, start: lease.acquired_at, end: null };
  known.lease = lease;
  if (event.kind === "lock.released" || event.kind === "lock.expired") known.end = event.ts;
  timeline.spans.set(lease.lock_id, known);
}

stream.on((event) => {
  if (event.kind.startsWith("lock.")) keepLeaseChange(event);
  else if (event.kind === "unit.created") keepUnit(event.unit);
});

/** Read the window from *since* to *until* (null: now): its units and lease changes. */
async function readWindow(since, until) {
  const search = { query: "", mode: "keyword", limit: 1000, since: new Date(since).toISOString() };
  if (until !== null) search.until = new Date(until).toISOString();
  let read = 0, total = 0, oldest = null;
  while (read < TIMELINE_UNITS) {
    const page = await api("/search", { method: "POST",
      body: { ...search, offset: read, limit: Math.min(1000, TIMELINE_UNITS - read) } });
    total = page.total;
    for (const hit of page.hits) {
      if (!hit.unit) continue;
      keepUnit(hit.unit);
      oldest = hit.unit.ts;
    }
    read += page.hits.length;
    if (!page.hits.length || read >= total) break;
  }
  if (total > read && oldest) timeline.unitsFrom = Math.max(timeline.unitsFrom ?? 0, new Date(oldest).getTime());
  const query = new URLSearchParams({ since: new Date(since).toISOString(), limit: String(HISTORY_PAGE) });
  if (until !== null) query.set("until", new Date(until).toISOString());
  let changes = 0, after = null;
  for (;;) {
    if (after !== null) query.set("after", String(after));
    const page = await api("/lock-history?" + query);
    for (const event of page.events) keepLeaseChange(event);
    changes += page.events.length;
    after = page.next_cursor;
    if (after === null) break;
    if (changes >= HISTORY_CHANGES) {
      const last = page.events.at(-1);
      timeline.historyTo = last ? new Date(last.ts).getTime() : since;
      break;
    }
  }
}

/** Forget what is older than a day, and the oldest units past the bound. */
function prune(now) {
  for (const [id, span] of timeline.spans)
    if (span.end && new Date(span.end).getTime() < now - DAY) timeline.spans.delete(id);
  const units = [...timeline.units.values()];
  const old = units.filter((u) => new Date(u.ts).getTime() < now - DAY);
  for (const unit of old) timeline.units.delete(unit.id);
  if (timeline.units.size > KEPT_UNITS) {
    const sorted = [...timeline.units.values()].sort((a, b) => new Date(a.ts) - new Date(b.ts));
    for (const unit of sorted.slice(0, timeline.units.size - KEPT_UNITS)) timeline.units.delete(unit.id);
  }
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(clean(child)));
  return node;
}

views.timeline = {
  async show() { await this.refresh(); },
  async refresh() {
    // A range of 0 fits the chart to the activity of the last day.
    const chosen = Number($("#timeline-form").range.value) * 1000;
    const end = Date.now();
    const wanted = end - (chosen || DAY);
    if (timeline.from === null || wanted < timeline.from) {
      await readWindow(wanted, timeline.from);
      timeline.from = wanted;
    }
    prune(end);
    const locks = await api("/locks");
    const rows = new Map();
    const row = (agent) => {
      if (!rows.has(agent)) rows.set(agent, { units: [], spans: [], waits: [] });
      return rows.get(agent);
    };
    for (const unit of timeline.units.values())
      if (new Date(unit.ts).getTime() >= wanted) row(unit.agent).units.push(unit);
    const held = new Set();
    for (const state of locks.locks) {
      for (const lease of (state.leases && state.leases.length ? state.leases : state.lease ? [state.lease] : [])) {
        held.add(lease.lock_id);
        const known = timeline.spans.get(lease.lock_id);
        timeline.spans.set(lease.lock_id, { lease, start: lease.acquired_at, end: null, ...known, end: null });
      }
      for (const waiter of state.waiters) row(waiter.agent).waits.push(state.resource);
    }
    for (const h of timeline.spans.values()) {
      // A lease not held now whose end was not read (the history was cut short): drawn
      // to the last change read.
      const stop = h.end ? new Date(h.end).getTime()
        : held.has(h.lease.lock_id) ? end : (timeline.historyTo ?? end);
      if (stop >= wanted) row(h.lease.holder).spans.push({ ...h, stop });
    }
    const times = [...rows.values()].flatMap((r) => [...r.units.map((u) => u.ts),
      ...r.spans.map((h) => h.start)]).map((t) => new Date(t).getTime()).filter((t) => t >= end - DAY);
    const span = chosen || Math.max(60000, (end - Math.min(end - 60000, ...times)) * 1.05);
    const start = end - span;
    const width = 1000, label = 150, lane = 34;
    const x = (t) => label + Math.max(0, Math.min(1, (new Date(t).getTime() - start) / span)) * (width - label - 10);
    const agents = [...rows.keys()].sort();
    const chart = svg("svg", { viewBox: `0 0 ${width} ${lane * agents.length + 30}`, role: "img",
      "aria-label": "Activity of " + agents.length + " agents" });
    for (let i = 0; i <= 6; i++) {
      const t = start + span * i / 6, px = x(t);
      chart.append(svg("line", { x1: px, x2: px, y1: 0, y2: lane * agents.length, class: "grid" }),
        svg("text", { x: px, y: lane * agents.length + 18, class: "tick",
          "text-anchor": i === 0 ? "start" : i === 6 ? "end" : "middle" },
          span > 7200000 ? new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : clock(t)));
    }
    agents.forEach((agent, i) => {
      const y = i * lane, data = rows.get(agent);
      const group = svg("g", { class: "lane", "data-agent": agent });
      group.append(svg("text", { x: 4, y: y + 21, class: "agent" }, short(agent, 20), svg("title", {}, agent)));
      for (const h of data.spans) {
        const from = x(h.start), to = x(h.stop);
        const claim = h.lease.resource.startsWith("task:");
        group.append(svg("rect", { x: from, y: y + 6, width: Math.max(2, to - from), height: 10,
          class: claim ? "claim" : "lease", "data-lock": h.lease.lock_id },
          svg("title", {}, (claim ? "claim " : "lease ") + clean(h.lease.resource) + " · " +
            clock(h.start) + "–" + (h.end ? clock(h.end) : held.has(h.lease.lock_id) ? "now" : "?"))));
      }
      for (const unit of data.units) {
        group.append(svg("rect", { x: x(unit.ts) - 1, y: y + 18, width: 3, height: 12,
          class: "unit t-" + unit.type.toLowerCase().replace(/[^a-z_]/g, "") },
          svg("title", {}, unit.type + " in " + clean(unit.context) + " at " + clock(unit.ts) +
            ": " + unit.text)));
      }
      if (data.waits.length) {
        group.append(svg("rect", { x: x(end) - 30, y: y + 6, width: 30, height: 10, class: "wait" },
          svg("title", {}, "waiting now for " + data.waits.map(clean).join(", "))));
      }
      chart.append(group);
    });
    // On a narrow screen the chart scrolls in its box: keep "now" (its right end) in view,
    // unless the person scrolled back to look at the past.
    const box = $("#timeline");
    const atNow = box.scrollLeft + box.clientWidth >= box.scrollWidth - 2;
    box.replaceChildren(agents.length ? chart : el("p", { class: "empty" }, "Nothing in this time."));
    if (atNow) box.scrollLeft = box.scrollWidth;
    const cut = [];
    if (timeline.unitsFrom !== null && timeline.unitsFrom > wanted)
      cut.push("units before " + clock(timeline.unitsFrom) + " are not all drawn (the newest " +
        TIMELINE_UNITS.toLocaleString("en") + " of the window were read)");
    if (timeline.historyTo !== null)
      cut.push("past leases are drawn up to " + clock(timeline.historyTo) + " only (the first " +
        HISTORY_CHANGES.toLocaleString("en") + " lease changes of the window were read), later ones as seen live");
    $("#timeline-note").textContent = cut.length ? "Cut short: " + cut.join("; ") + "." : "";
    $("#timeline-note").hidden = !cut.length;
  },
};
$("#timeline-form").addEventListener("change", () => views.timeline.refresh().catch(report));
const refreshTimeline = throttle(() => current === "timeline" && views.timeline.refresh(), 1000);
stream.on(() => refreshTimeline());

// -- start ------------------------------------------------------------------------------

function start() {
  $("#signout").hidden = !token();
  stream.after = null;
  stream.open();
  route();
}

start();
