// The agent-server console: plain JavaScript, no framework, no build step. It uses only the public
// HTTP API with the credential it is given, so it can never see more than that credential allows.
// Message text is always put in the page as text (textContent), never as HTML.

// The server's root, behind any path prefix: the console lives at <root>console/.
const root = new URL("..", location.href);
const main = document.getElementById("main");
// Bumped on every navigation: work that finishes after the page changed draws nothing.
let view = 0;
const nav = document.getElementById("nav");
const status = document.getElementById("status");

const auth = {
  get key() { return sessionStorage.getItem("agent-console-key") || ""; },
  get tenant() { return sessionStorage.getItem("agent-console-tenant") || ""; },
  get signedIn() { return sessionStorage.getItem("agent-console-tenant") !== null; },
  /** The user a JWT names (`sub`), read for display and navigation only: the server checks it. */
  get jwtUser() {
    const parts = this.key.split(".");
    if (parts.length !== 3) return null;
    try {
      const payload = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
      return typeof payload.sub === "string" ? payload.sub : null;
    } catch { return null; }
  },
  save(key, tenant) {
    sessionStorage.setItem("agent-console-key", key);
    sessionStorage.setItem("agent-console-tenant", tenant);
  },
  clear() {
    sessionStorage.removeItem("agent-console-key");
    sessionStorage.removeItem("agent-console-tenant");
  },
};

// ---- DOM ----------------------------------------------------------------------------------------

/** An element with attributes (`on*` functions become listeners) and children (strings are text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
}

/** Whether the page is still the one that `token` was taken for. */
const current = (token) => token === view;

function say(text, isError = false) {
  const note = el("span", { class: isError ? "error" : "" }, text);
  status.replaceChildren(note);
  setTimeout(() => { if (note.isConnected) note.remove(); }, isError ? 8000 : 3000);
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return isNaN(d) ? ts : d.toLocaleString();
}

function seg(value) {
  return encodeURIComponent(value);
}

// ---- API ----------------------------------------------------------------------------------------

function headers(extra = {}) {
  const h = { ...extra };
  if (auth.key) h.authorization = `Bearer ${auth.key}`;
  return h;
}

/** Calls the API; resolves to { body, link } or throws an Error with the server's message. */
async function api(path, { method = "GET", body, extraHeaders } = {}) {
  const init = { method, headers: headers(extraHeaders) };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(new URL(path, root), init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) {
    const message = data && data.error ? `${data.error.message} (${response.status})` : `HTTP ${response.status}`;
    if (response.status === 401) {
      auth.clear();
      setTimeout(route, 0);
    }
    throw new Error(message);
  }
  return { body: data, link: nextLink(response.headers.get("link")) };
}

function nextLink(header) {
  const m = header && header.match(/<([^>]+)>;\s*rel="next"/);
  return m ? m[1].replace(/^\//, "") : null;
}

const tenantPath = () => `agent/conversations/${seg(auth.tenant)}`;
const agentsPath = () => `agent/tenants/${seg(auth.tenant)}/agents`;

// ---- Views --------------------------------------------------------------------------------------

function renderNav() {
  nav.replaceChildren();
  if (!auth.signedIn) return;
  const search = el("form", { class: "row", role: "search", onsubmit: (e) => {
    e.preventDefault();
    const q = e.target.q.value.trim();
    if (q) location.hash = `#/search?q=${encodeURIComponent(q)}`;
  } }, el("input", { name: "q", type: "search", placeholder: "Search messages", "aria-label": "Search messages" }));
  nav.append(
    el("span", { class: "muted" }, `tenant ${auth.tenant}`),
    el("a", { href: "#/" }, "Conversations"),
    el("a", { href: "#/agents" }, "Agents"),
    el("a", { href: "#/usage" }, "Usage"),
    el("a", { href: "#/channels" }, "Channels"),
    search,
    el("button", { class: "secondary", type: "button", onclick: () => { auth.clear(); location.hash = "#/"; route(); } }, "Sign out"),
  );
}

function signIn() {
  const form = el("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    const tenant = form.tenant.value.trim();
    if (!tenant) return say("Give the tenant id", true);
    auth.save(form.key.value.trim(), tenant);
    // Any credential of the tenant reads a session; one that does not exist answers 404.
    let check;
    try {
      check = await fetch(new URL(`${tenantPath()}/sessions/console-sign-in-check`, root), { headers: headers() });
    } catch (err) {
      auth.clear();
      return say(`Sign-in failed: ${err.message}`, true);
    }
    if (check.status !== 404 && !check.ok) {
      const body = await check.json().catch(() => null);
      auth.clear();
      return say(`Sign-in failed: ${body && body.error ? body.error.message : `HTTP ${check.status}`}`, true);
    }
    if (location.hash === "#/") route();
    else location.hash = "#/";
  } },
  el("h1", {}, "Sign in"),
  el("p", { class: "muted" }, "The credential stays in this browser tab (sessionStorage). Leave it empty for a server on loopback with AUTH_MODE=none."),
  el("div", { class: "row" },
    el("label", {}, "API key or JWT", el("input", { name: "key", type: "password", autocomplete: "off" })),
    el("label", {}, "Tenant", el("input", { name: "tenant", required: true, autocomplete: "off" })),
  ),
  el("button", { type: "submit" }, "Sign in"));
  show(form);
  form.key.focus();
}

/** The tenant's recent conversations (from its recent messages), and a form to open a user. */
async function home() {
  const userForm = el("form", { class: "row", onsubmit: (e) => {
    e.preventDefault();
    const user = e.target.user.value.trim();
    if (user) location.hash = `#/users/${encodeURIComponent(user)}`;
  } }, el("label", {}, "User id", el("input", { name: "user", required: true, autocomplete: "off" })), el("button", { type: "submit" }, "Open user"));
  const list = el("ul", { class: "list", "aria-label": "Recent conversations" }, el("li", { class: "muted" }, "Loading..."));
  show(el("h1", {}, "Conversations"), userForm, el("h2", {}, "Recent activity in this tenant"), list);
  try {
    const { body } = await api(`${tenantPath()}/messages?limit=100`);
    const seen = new Map();
    for (const m of body) if (!seen.has(m.sessionId)) seen.set(m.sessionId, m);
    list.replaceChildren(...[...seen.values()].map((m) => el("li", {},
      el("a", { href: `#/sessions/${encodeURIComponent(m.sessionId)}` }, m.sessionId),
      el("span", {}, `user ${m.userId}`),
      el("span", { class: "muted" }, when(m.timestamp)),
    )));
    if (!seen.size) list.replaceChildren(el("li", { class: "muted" }, "No messages yet."));
  } catch (err) {
    // A credential bound to one user (a JWT) sees that user's sessions only.
    const user = auth.jwtUser;
    list.replaceChildren(el("li", { class: "muted" }, `Not available with this credential: ${err.message}`,
      user ? el("span", {}, " - ", el("a", { href: `#/users/${encodeURIComponent(user)}` }, `open your sessions (${user})`)) : null));
  }
}

/** One user's sessions, most recent activity first. */
async function userSessions(user) {
  const list = el("ul", { class: "list", "aria-label": "Sessions" }, el("li", { class: "muted" }, "Loading..."));
  show(el("h1", {}, `User ${user}`), list);
  try {
    const { body } = await api(`${tenantPath()}/users/${seg(user)}?limit=50&messageLimit=1`);
    list.replaceChildren(...body.map((s) => el("li", {},
      el("a", { href: `#/sessions/${encodeURIComponent(s.id)}` }, s.id),
      el("span", { class: `badge ${s.isActive ? "active" : ""}` }, s.isActive ? "active" : "closed"),
      el("span", { class: "muted" }, `last activity ${when(s.updatedAt)}`),
      s.contextSummary ? el("span", { class: "badge" }, "summarised") : null,
      s.messages && s.messages.length ? el("span", { class: "muted" }, s.messages[0].content.slice(0, 80)) : null,
    )));
    if (!body.length) list.replaceChildren(el("li", { class: "muted" }, "No sessions."));
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted" }, err.message));
  }
}

/** What the server recorded about a message: an agent message's metadata. A user message's metadata
 * is the client's own, whatever it looks like, and is never drawn as the model, usage, turn status
 * or actions (a forged action card could approve a real action by its id). */
function serverMeta(m) {
  return m.role === "agent" && m.metadata && typeof m.metadata === "object" ? m.metadata : {};
}

function metaLine(m) {
  const md = serverMeta(m);
  const parts = [`${m.role} · ${when(m.timestamp)}`];
  if (md.model) parts.push(`model ${md.model}`);
  if (md.usage) parts.push(`tokens ${md.usage.inputTokens} in / ${md.usage.outputTokens} out`);
  if (md.latencyMs !== undefined) parts.push(`${md.latencyMs} ms`);
  if (md.turnStatus) parts.push(`turn ${md.turnStatus}`);
  if (md.interrupted) parts.push(`interrupted: ${md.interrupted}`);
  return el("div", { class: "meta" }, ...parts.map((p) => el("span", {}, p)));
}

function actionView(session, message, action, refresh) {
  const decide = (verdict) => async (e) => {
    for (const b of e.target.parentNode.querySelectorAll("button")) b.disabled = true;
    try {
      say(verdict === "approve" ? "Running the action..." : "Rejecting...");
      await api(`${tenantPath()}/sessions/${seg(session.id)}/actions/${seg(action.id)}/${verdict}`, { method: "POST" });
      say(verdict === "approve" ? "Approved" : "Rejected");
    } catch (err) {
      say(err.message, true);
    }
    refresh();
  };
  return el("div", { class: "action", "data-action": action.id },
    el("div", {}, el("strong", {}, action.tool), " ", el("span", { class: `badge ${action.status}` }, action.status)),
    el("pre", {}, JSON.stringify(action.arguments, null, 2)),
    action.result ? el("pre", {}, String(action.result)) : null,
    action.status === "pending_approval"
      ? el("div", { class: "row" },
        el("button", { type: "button", onclick: decide("approve") }, "Approve"),
        el("button", { type: "button", class: "danger", onclick: decide("reject") }, "Reject"))
      : null,
  );
}

function messageView(session, m, refresh) {
  const md = serverMeta(m);
  const actions = Array.isArray(md.actions) ? md.actions.filter((a) => a && typeof a.id === "string") : [];
  return el("article", { class: `message ${m.role}`, "data-id": m.id },
    el("div", { class: "text" }, m.content),
    metaLine(m),
    ...actions.map((a) => actionView(session, m, a, refresh)));
}

/** Reads server-sent events from a fetch response body; calls `onEvent(name, data, id)`. */
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    // Line endings may be \r\n or \r (a \r at the end of a chunk waits for the next one).
    buffer += decoder.decode(value, { stream: true });
    const held = buffer.endsWith("\r") ? "\r" : "";
    buffer = buffer.slice(0, buffer.length - held.length).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith("id:")) id = Number(line.slice(3).trim());
      }
      if (!data.length) continue;
      let parsed;
      try { parsed = JSON.parse(data.join("\n")); } catch { continue; }
      onEvent(name, parsed, id);
    }
    buffer += held;
  }
}

/** Sends a turn and shows its reply as it streams; picks the stream up again if it drops. */
async function sendTurn(session, text, transcript, refresh) {
  const live = el("article", { class: "message agent", "aria-live": "polite" }, el("div", { class: "text" }, ""));
  const liveText = live.firstChild;
  transcript.append(el("article", { class: "message user" }, el("div", { class: "text" }, text)), live);
  let turnId = null, lastId = 0, finished = false;
  const onEvent = (name, data, id) => {
    if (id) lastId = id;
    if (name === "session") turnId = data.turnId;
    else if (name === "delta") liveText.textContent += data.text;
    else if (name === "tool_call") live.append(el("div", { class: "action" }, `calling ${data.name || data.tool || "a tool"}...`));
    else if (name === "done" || name === "error") {
      finished = true;
      if (name === "error") say(data.error ? data.error.message : "The turn failed", true);
    }
  };
  const headersFor = { "x-tenant-id": session.tenantId, "x-user-id": session.userId, accept: "text/event-stream" };
  try {
    const response = await fetch(new URL("agent/process", root), {
      method: "POST",
      headers: headers({ ...headersFor, "content-type": "application/json" }),
      body: JSON.stringify({ message: text, sessionId: session.id, stream: true }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new Error(body && body.error ? body.error.message : `HTTP ${response.status}`);
    }
    await readEvents(response, onEvent);
  } catch (err) {
    if (!turnId) { say(err.message, true); live.remove(); return false; }
  }
  // The connection dropped before `done`: the turn goes on on the server; follow its events from
  // the last one shown (`Last-Event-ID`), so nothing is shown twice.
  for (let attempt = 0; !finished && turnId && attempt < 5; attempt++) {
    await new Promise((r) => setTimeout(r, 500 * attempt));
    say("Reconnecting to the turn...");
    try {
      const response = await fetch(new URL(`${tenantPath()}/sessions/${seg(session.id)}/turns/${seg(turnId)}/events`, root), {
        headers: headers({ "last-event-id": String(lastId), accept: "text/event-stream" }),
      });
      if (response.ok) await readEvents(response, onEvent);
      else if (response.status < 500 && ![408, 429].includes(response.status)) break;
    } catch { /* the network again: try once more */ }
  }
  if (!finished) say("Lost the turn's stream; the reply will show once it is stored.", true);
  refresh();
  return true;
}

/** A session: its messages with their metadata and actions, a chat box, and its commands. */
async function sessionView(id) {
  let session;
  const token = view;
  try {
    session = (await api(`${tenantPath()}/sessions/${seg(id)}`)).body;
  } catch (err) {
    return current(token) && show(el("h1", {}, "Session"), el("p", {}, err.message));
  }
  if (!current(token)) return;
  const transcript = el("section", { class: "transcript", "aria-label": "Messages" });
  const count = el("span", { class: "muted" });
  const messages = [];
  const refresh = () => { if (current(token)) sessionView(id); };
  const download = () => {
    const blob = new Blob([JSON.stringify({ session, messages }, null, 2)], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: `session-${session.id}.json` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };
  const close = async () => {
    try { await api(`${tenantPath()}/sessions/${seg(id)}/close`, { method: "POST" }); say("Closed"); } catch (err) { say(err.message, true); }
    refresh();
  };
  const remove = async () => {
    if (!confirm("Delete this session and all its messages?")) return;
    try { await api(`${tenantPath()}/sessions/${seg(id)}`, { method: "DELETE" }); say("Deleted"); location.hash = `#/users/${encodeURIComponent(session.userId)}`; } catch (err) { say(err.message, true); }
  };
  const chat = el("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    const text = chat.message.value;
    if (!text.trim() || chat.send.disabled) return;
    chat.message.value = "";
    chat.send.disabled = true;
    const sent = await sendTurn(session, text, transcript, refresh);
    if (sent === false) {
      // Refused before it started (409, 413, 429, ...): the text comes back to be sent again.
      transcript.lastChild && transcript.lastChild.remove();
      chat.message.value = text;
      chat.send.disabled = false;
    }
  } },
  el("label", {}, "Message", el("textarea", { name: "message", required: true, onkeydown: (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) chat.requestSubmit();
  } })),
  el("button", { type: "submit", name: "send" }, "Send"));
  show(
    el("h1", {}, `Session ${session.id}`),
    el("div", { class: "row" },
      el("a", { href: `#/users/${encodeURIComponent(session.userId)}` }, `user ${session.userId}`),
      el("span", { class: `badge ${session.isActive ? "active" : ""}` }, session.isActive ? "active" : "closed"),
      session.locationId ? el("span", { class: "muted" }, `location ${session.locationId}`) : null,
      el("span", { class: "muted" }, `updated ${when(session.updatedAt)}`),
      count,
    ),
    el("div", { class: "row" },
      el("button", { type: "button", class: "secondary", onclick: download }, "Download JSON"),
      session.isActive ? el("button", { type: "button", class: "secondary", onclick: close }, "Close session") : null,
      el("button", { type: "button", class: "danger", onclick: remove }, "Delete session"),
    ),
    session.contextSummary ? el("details", {}, el("summary", {}, "Context summary"), el("div", { class: "text" }, session.contextSummary.text)) : null,
    transcript,
    session.isActive ? chat : el("p", { class: "muted" }, "This session is closed."),
  );
  try {
    let path = `${tenantPath()}/sessions/${seg(id)}/messages?order=asc&limit=100`;
    while (path) {
      const page = await api(path);
      messages.push(...page.body);
      path = page.link;
    }
    transcript.replaceChildren(...messages.map((m) => messageView(session, m, refresh)));
    count.textContent = `${messages.length} message${messages.length === 1 ? "" : "s"}`;
  } catch (err) {
    transcript.replaceChildren(el("p", {}, err.message));
  }
}

/** The snippet as text, with its highlights as <mark> elements (offsets are code points). */
function snippetView(snippet, highlights) {
  const chars = Array.from(snippet);
  const parts = [];
  let at = 0;
  for (const [start, end] of highlights) {
    if (start < at) continue;
    parts.push(chars.slice(at, start).join(""), el("mark", {}, chars.slice(start, end).join("")));
    at = end;
  }
  parts.push(chars.slice(at).join(""));
  return el("span", {}, ...parts);
}

async function searchView(q) {
  const list = el("ul", { class: "list", "aria-label": "Results" }, el("li", { class: "muted" }, "Searching..."));
  show(el("h1", {}, `Search: ${q}`), list);
  try {
    const { body } = await api(`${tenantPath()}/search?q=${encodeURIComponent(q)}&limit=50`);
    list.replaceChildren(...body.results.map((r) => el("li", {},
      el("a", { href: `#/sessions/${encodeURIComponent(r.sessionId)}` }, snippetView(r.snippet, r.highlights)),
      el("span", { class: "muted" }, `${r.role} · user ${r.userId} · ${when(r.timestamp)}`),
    )));
    if (!body.results.length) list.replaceChildren(el("li", { class: "muted" }, "Nothing found."));
    if (body.partial) list.append(el("li", { class: "muted" }, "Only the most recent messages were searched."));
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted" }, err.message));
  }
}


// ---- Agents -------------------------------------------------------------------------------------

/** The tenant's agents: id, name, version, which is the default. */
async function agentsView() {
  const list = el("ul", { class: "list", "aria-label": "Agents" }, el("li", { class: "muted" }, "Loading..."));
  show(el("h1", {}, "Agents"),
    el("p", { class: "muted" }, "Each agent is what a turn runs as: its instructions, model, tools and business API. Turns that name none run as the default agent, else as the server's."),
    el("p", {}, el("a", { href: "#/agents/new", class: "button" }, "New agent")),
    list);
  try {
    const agents = [];
    let path = `${agentsPath()}?limit=100`;
    while (path) {
      const page = await api(path);
      agents.push(...page.body);
      path = page.link;
    }
    list.replaceChildren(...agents.map((a) => el("li", {},
      el("a", { href: `#/agents/${encodeURIComponent(a.id)}` }, a.id),
      el("span", {}, a.name || ""),
      a.default ? el("span", { class: "badge active" }, "default") : null,
      a.version ? el("span", { class: "muted" }, `version ${a.version}`) : null,
    )));
    if (!agents.length) list.replaceChildren(el("li", { class: "muted" }, "No agents yet: every turn runs as the server's agent."));
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted" }, err.message));
  }
}

/** The tenant's channels (WhatsApp, Twilio, email) and the replies that could not be delivered. */
async function channelsView() {
  const token = view;
  const list = el("ul", { class: "list", "aria-label": "Channels" }, el("li", { class: "muted" }, "Loading..."));
  const failures = el("ul", { class: "list", "aria-label": "Delivery failures" }, el("li", { class: "muted" }, "Loading..."));
  show(el("h1", {}, "Channels"),
    el("p", { class: "muted" }, "Where customers reach the tenant's agents. Set them up through the API (docs/channels.md)."),
    list, el("h2", {}, "Delivery failures"), failures);
  try {
    const channels = (await api(`agent/tenants/${seg(auth.tenant)}/channels`)).body;
    if (token !== view) return;
    list.replaceChildren(...channels.map((c) => el("li", {},
      el("span", {}, c.id), el("span", { class: "badge" }, c.type),
      el("span", { class: "muted" }, c.agentId ? `agent ${c.agentId}` : "the default agent"),
      el("span", { class: "muted" }, c.phoneNumberId || c.from || c.address || ""))));
    if (!channels.length) list.replaceChildren(el("li", { class: "muted" }, "No channels yet."));
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted" }, err.message));
  }
  try {
    const events = (await api(`agent/events/${seg(auth.tenant)}?types=channel.delivery_failed&limit=100`)).body;
    if (token !== view) return;
    failures.replaceChildren(...events.slice().reverse().map((e) => el("li", {},
      el("span", { class: "muted" }, e.timestamp), el("span", {}, e.data.channelId),
      el("a", { href: `#/users/${encodeURIComponent(e.data.userId)}` }, e.data.userId),
      el("span", {}, e.data.error))));
    if (!events.length) failures.replaceChildren(el("li", { class: "muted" }, "None."));
  } catch (err) {
    failures.replaceChildren(el("li", { class: "muted" }, err.message));
  }
}

/** An SVG element (no inline style: the Content-Security-Policy allows none). */
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children) node.append(typeof c === "string" ? document.createTextNode(c) : c);
  return node;
}

const usd = (v) => `$${Number(v || 0).toFixed(4)}`;
const tokensOf = (r) => (r.inputTokens || 0) + (r.outputTokens || 0);

/** Tokens per day as bars, drawn in SVG (no chart library). */
function dayChart(rows) {
  const width = 600, height = 160, pad = 24;
  const max = Math.max(1, ...rows.map(tokensOf));
  const step = rows.length ? (width - pad) / rows.length : 0;
  const bars = rows.map((r, i) => {
    const h = Math.round((tokensOf(r) / max) * (height - pad - 20));
    const w = Math.max(2, Math.min(step - 4, 40));
    const bar = svg("rect", { x: pad + i * step + (step - w) / 2, y: height - pad - h, width: w, height: h, class: "bar" });
    bar.append(svg("title", {}, `${r.key}: ${tokensOf(r)} tokens, ${usd(r.costUsd)}`));
    return bar;
  });
  const labels = rows.length ? [
    svg("text", { x: pad, y: height - 6, class: "axis" }, rows[0].key),
    svg("text", { x: width, y: height - 6, "text-anchor": "end", class: "axis" }, rows[rows.length - 1].key),
  ] : [];
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Tokens per day", class: "chart" },
    svg("text", { x: pad, y: 12, class: "axis" }, `${max} tokens`),
    svg("line", { x1: pad, y1: height - pad, x2: width, y2: height - pad, class: "axis-line" }),
    ...bars, ...labels);
}

function usageTable(label, rows) {
  return el("table", { class: "usage", "aria-label": label },
    el("thead", {}, el("tr", {}, ...[label, "input", "output", "calls", "turns", "cost"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", {},
      el("td", {}, r.key || "(the server's agent)"), el("td", {}, String(r.inputTokens)), el("td", {}, String(r.outputTokens)),
      el("td", {}, String(r.modelCalls)), el("td", {}, String(r.turns)), el("td", {}, usd(r.costUsd))))));
}

/** The tenant's usage this month (by day as a chart, by user and by model) and its budgets. */
async function usageView() {
  const token = view;
  const body = el("div", {}, el("p", { class: "muted" }, "Loading..."));
  show(el("h1", {}, "Usage"),
    el("p", { class: "muted" }, "Tokens, model calls and cost this month (UTC), as the price table counts them."),
    body);
  const base = `agent/usage/${seg(auth.tenant)}`;
  try {
    const [days, users, models] = await Promise.all(["day", "user", "model"].map((g) => api(`${base}?groupBy=${g}`)));
    let budgets = null;
    try { budgets = (await api(`agent/budgets/${seg(auth.tenant)}`)).body; } catch { budgets = null; }
    if (token !== view) return;
    const t = days.body.totals;
    const limit = (l) => l ? [l.tokens ? `${l.tokens} tokens` : null, l.costUsd ? usd(l.costUsd) : null].filter(Boolean).join(" or ") : "none";
    body.replaceChildren(
      el("p", {}, `${tokensOf(t)} tokens (${t.inputTokens} in, ${t.outputTokens} out), ${t.modelCalls} model calls, ${t.turns} turns, ${usd(t.costUsd)}`,
        t.unpricedTokens ? el("span", { class: "muted" }, ` (${t.unpricedTokens} tokens of unpriced models)`) : ""),
      el("h2", {}, "By day"), dayChart(days.body.rows),
      el("h2", {}, "By user"), usageTable("user", users.body.rows),
      el("h2", {}, "By model"), usageTable("model", models.body.rows),
      el("h2", {}, "Budgets"),
      budgets ? el("ul", { class: "list", "aria-label": "Budgets" },
        el("li", {}, el("span", {}, "Monthly"), el("span", {}, limit(budgets.monthly)),
          el("span", { class: "muted" }, `used ${budgets.used.monthly.tokens} tokens, ${usd(budgets.used.monthly.costUsd)}`)),
        el("li", {}, el("span", {}, "Per user and day"), el("span", {}, limit(budgets.perUserDaily))),
        el("li", {}, el("span", {}, "Warning at"), el("span", {}, `${Math.round(budgets.warnAt * 100)} %`)))
        : el("p", { class: "muted" }, "This credential cannot read the budgets."),
    );
  } catch (err) {
    if (token === view) body.replaceChildren(el("p", { class: "muted" }, err.message));
  }
}

const words = (value) => value.split(",").map((w) => w.trim()).filter(Boolean);

/** One agent's form: view and edit it (the key is write-only), make it the default, delete it. */
async function agentView(id) {
  const token = view;
  const isNew = id === null;
  let agent = { systemPrompt: "", default: false };
  if (!isNew) {
    try {
      agent = (await api(`${agentsPath()}/${seg(id)}`)).body;
    } catch (err) {
      return show(el("h1", {}, `Agent ${id}`), el("p", {}, err.message));
    }
    if (!current(token)) return;
  }
  const model = agent.model || {};
  const tools = agent.tools || {};
  const business = agent.businessApi || {};
  const field = (label, input) => el("label", {}, label, input);
  const form = el("form", { class: "card agent", onsubmit: async (e) => {
    e.preventDefault();
    const f = e.target;
    const agentId = isNew ? f.agentId.value.trim() : id;
    const body = { systemPrompt: f.systemPrompt.value, default: f.default.checked };
    if (f.name.value.trim()) body.name = f.name.value.trim();
    const m = {};
    if (f.provider.value) m.provider = f.provider.value;
    if (f.modelName.value.trim()) m.name = f.modelName.value.trim();
    if (f.temperature.value !== "") m.temperature = Number(f.temperature.value);
    if (f.maxOutputTokens.value !== "") m.maxOutputTokens = Number(f.maxOutputTokens.value);
    if (Object.keys(m).length) body.model = m;
    const t = {};
    if (f.approval.value) t.approval = f.approval.value;
    if (f.allow.value.trim()) t.allow = words(f.allow.value);
    if (f.deny.value.trim()) t.deny = words(f.deny.value);
    if (f.resourceTypes.value.trim()) t.resourceTypes = words(f.resourceTypes.value);
    if (Object.keys(t).length) body.tools = t;
    if (f.apiUrl.value.trim() || f.apiKey.value || f.clearKey.checked) {
      body.businessApi = {};
      if (f.apiUrl.value.trim()) body.businessApi.url = f.apiUrl.value.trim();
      // Write-only: an empty field keeps the stored key.
      if (f.clearKey.checked) body.businessApi.key = "";
      else if (f.apiKey.value) body.businessApi.key = f.apiKey.value;
    }
    // What this form does not edit is kept as it was.
    for (const kept of ["metadata", "history", "summary"]) if (agent[kept]) body[kept] = agent[kept];
    if (isNew) {
      const exists = await fetch(new URL(`${agentsPath()}/${seg(agentId)}`, root), { headers: headers() });
      if (exists.ok) return say(`An agent ${agentId} exists already: open it to edit it`, true);
    }
    try {
      const { body: saved } = await api(`${agentsPath()}/${seg(agentId)}`, { method: "PUT", body });
      say(`Saved ${saved.id} (version ${saved.version})`);
      location.hash = `#/agents/${encodeURIComponent(saved.id)}`;
      if (!isNew) agentView(saved.id);
    } catch (err) {
      say(`Not saved: ${err.message}`, true);
    }
  } },
  isNew ? field("Agent id", el("input", { name: "agentId", required: true, pattern: "[A-Za-z0-9._\\-]{1,64}", autocomplete: "off" })) : null,
  field("Name", el("input", { name: "name", value: agent.name || "", autocomplete: "off" })),
  field("Instructions (system prompt)", el("textarea", { name: "systemPrompt", rows: 6, required: true }, agent.systemPrompt || "")),
  el("label", { class: "inline" }, el("input", { type: "checkbox", name: "default", checked: agent.default === true }), "The tenant's default agent"),
  el("fieldset", {}, el("legend", {}, "Model (empty: the server's)"),
    field("Provider", el("select", { name: "provider" }, ...["", "openai", "bedrock", "echo"].map((p) =>
      el("option", { value: p, selected: (model.provider || "") === p }, p || "the server's")))),
    field("Model name", el("input", { name: "modelName", value: model.name || "", autocomplete: "off" })),
    field("Temperature", el("input", { name: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: model.temperature ?? "" })),
    field("Max output tokens", el("input", { name: "maxOutputTokens", type: "number", min: 1, value: model.maxOutputTokens ?? "" }))),
  el("fieldset", {}, el("legend", {}, "Tools"),
    field("Approval", el("select", { name: "approval" }, ...["", "writes", "all", "none"].map((p) =>
      el("option", { value: p, selected: (tools.approval || "") === p }, p || "the server's")))),
    field("Only these tools (comma-separated)", el("input", { name: "allow", value: (tools.allow || []).join(", "), autocomplete: "off" })),
    field("Never these tools", el("input", { name: "deny", value: (tools.deny || []).join(", "), autocomplete: "off" })),
    field("Resource types", el("input", { name: "resourceTypes", value: (tools.resourceTypes || []).join(", "), autocomplete: "off" }))),
  el("fieldset", {}, el("legend", {}, "Business API (empty: the server's)"),
    field("URL", el("input", { name: "apiUrl", type: "url", value: business.url || "", autocomplete: "off" })),
    field(business.keySet ? "Key (one is set; leave empty to keep it)" : "Key",
      el("input", { name: "apiKey", type: "password", autocomplete: "new-password", placeholder: business.keySet ? "set" : "" })),
    business.keySet ? el("label", { class: "inline" }, el("input", { type: "checkbox", name: "clearKey" }), "Remove the key") : el("input", { type: "hidden", name: "clearKey" })),
  el("div", { class: "row" },
    el("button", { type: "submit" }, isNew ? "Create agent" : "Save"),
    isNew ? null : el("button", { type: "button", class: "danger", onclick: async () => {
      if (!confirm(`Delete agent ${id}? Its sessions keep their messages.`)) return;
      try {
        await api(`${agentsPath()}/${seg(id)}`, { method: "DELETE" });
        say(`Deleted ${id}`);
        location.hash = "#/agents";
      } catch (err) {
        say(`Not deleted: ${err.message}`, true);
      }
    } }, "Delete agent")));
  show(el("h1", {}, isNew ? "New agent" : `Agent ${id}`),
    isNew ? null : el("p", { class: "muted" }, `version ${agent.version} · created ${when(agent.createdAt)} · updated ${when(agent.updatedAt)}`),
    form);
}

// ---- Routing ------------------------------------------------------------------------------------

async function route() {
  view += 1;
  renderNav();
  if (!auth.signedIn) return signIn();
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  let parts;
  try { parts = path.split("/").map(decodeURIComponent); } catch { parts = []; }
  if (parts[0] === "users" && parts[1]) await userSessions(parts[1]);
  else if (parts[0] === "sessions" && parts[1]) await sessionView(parts[1]);
  else if (parts[0] === "search") await searchView(new URLSearchParams(query || "").get("q") || "");
  else if (parts[0] === "agents" && parts[1] === "new") await agentView(null);
  else if (parts[0] === "agents" && parts[1]) await agentView(parts[1]);
  else if (parts[0] === "agents") await agentsView();
  else if (parts[0] === "usage") await usageView();
  else if (parts[0] === "channels") await channelsView();
  else await home();
  main.focus();
}

// Only `#/...` is a page of the console (`#main` is the skip link).
window.addEventListener("hashchange", () => { if (location.hash === "" || location.hash.startsWith("#/")) route(); });
route();
