// The demo page: a chat on trio_rt's browser client (served by the manager at /trio_rt.js).
// Everything user-provided goes into the DOM with textContent, never as HTML.
import { TrioRtClient } from "/trio_rt.js";

const DEFAULT_ROOMS = ["chat:general", "chat:random"];
// The demo's name rule (examples/web_ui.py USER_NAME: Python's \w is Unicode letters and digits).
const NAME = /^[\p{L}\p{N}_.@-]{1,32}$/u;
const NOTICE_MS = 8000; // a notice goes away after this long (a new one replaces it)
const STATE_LABELS = {
  connecting: "connecting…",
  open: "connected",
  reconnecting: "reconnecting…",
  closed: "offline",
};
// Why a rejoin could not replay what was missed (`recovery_failed` reasons), in plain words.
const RECOVERY_TEXT = {
  epoch_changed:
    "The server restarted while you were away. Anything said just before the restart may be missing.",
  retention: "You were away for long: some messages in between are no longer kept.",
  too_many: "You missed too many messages to replay them all: showing the latest.",
  unavailable: "Some messages could not be fetched from the server just now: showing the latest.",
};
const $ = (id) => document.getElementById(id);

const rooms = new Map(); // room -> {messages: [], keys: Set, epochs: Map, joined}
let current = null;
let client = null;
let config = { posts: false, tokens: true, off: [] };
let arrivals = 0; // numbers messages in arrival order (the order of those without a position)
let noticeTimer = null;

function keyOf(m) {
  if (m.position) return `${m.position.epoch}:${m.position.offset}`;
  const d = m.data ?? {};
  return `${d.user_id}|${d.timestamp}|${d.message}`;
}

function roomState(room) {
  if (!rooms.has(room)) {
    rooms.set(room, { messages: [], keys: new Set(), epochs: new Map(), joined: false });
  }
  return rooms.get(room);
}

// --8<-- [start:order]
// Messages are shown in position order: by epoch, in the order this page first saw each one (a
// restarted server starts a new epoch, after the old one), then by offset. Messages without a
// position (a room without history) keep their arrival order.
function epochRank(st, epoch) {
  if (!st.epochs.has(epoch)) st.epochs.set(epoch, st.epochs.size);
  return st.epochs.get(epoch);
}

function before(st, a, b) {
  if (a.position && b.position) {
    const ra = epochRank(st, a.position.epoch);
    const rb = epochRank(st, b.position.epoch);
    return ra !== rb ? ra < rb : a.position.offset < b.position.offset;
  }
  return a.arrival < b.arrival;
}

function addMessage(room, m) {
  const st = roomState(room);
  const k = keyOf(m);
  if (st.keys.has(k)) return; // each position once (recovery, history and live overlap)
  st.keys.add(k);
  if (m.position) epochRank(st, m.position.epoch);
  const item = { ...m, arrival: arrivals++ };
  let i = st.messages.length; // usually the end: messages mostly come in order
  while (i > 0 && before(st, item, st.messages[i - 1])) i--;
  st.messages.splice(i, 0, item);
  if (room === current) showMessage(item, i);
}

function setHistory(room, messages) {
  // Merge the server's history with what is shown (a restarted server has only what was said
  // since): sorted, each message once.
  for (const m of messages) addMessage(room, m);
}
// --8<-- [end:order]

function notify(text, { sticky = false } = {}) {
  $("notice").textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = sticky || !text ? null : setTimeout(() => ($("notice").textContent = ""), NOTICE_MS);
}

function showMessage(m, index) {
  const list = $("messages");
  const li = messageItem(m);
  const atEnd = index >= list.children.length;
  list.insertBefore(li, atEnd ? null : list.children[index]);
  if (atEnd) list.scrollTop = list.scrollHeight;
}

function messageItem(m) {
  const li = document.createElement("li");
  li.className = "msg";
  const d = m.data ?? {};
  const user = document.createElement("span");
  user.className = "user";
  user.textContent = d.user_id ?? "?";
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = d.message ?? "";
  const time = document.createElement("time");
  time.className = "time";
  time.textContent = d.timestamp ? new Date(d.timestamp).toLocaleTimeString() : "";
  li.append(user, text, time);
  return li;
}

function renderMessages() {
  const list = $("messages");
  list.replaceChildren(...(rooms.get(current)?.messages ?? []).map(messageItem));
  list.scrollTop = list.scrollHeight;
}

function renderRooms(counts = new Map()) {
  const names = new Set([...DEFAULT_ROOMS, ...rooms.keys(), ...counts.keys()]);
  const ul = $("rooms");
  ul.replaceChildren();
  for (const name of [...names].sort()) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.room = name;
    b.textContent = name;
    if (name === current) b.className = "current";
    if (counts.has(name)) {
      const c = document.createElement("span");
      c.className = "count";
      c.textContent = counts.get(name);
      b.append(c);
    }
    b.addEventListener("click", () => openRoom(name));
    li.append(b);
    ul.append(li);
  }
}

// Who is in the room (across servers): asked when the room opens and again after each
// `presence_diff` event of it (the events are coalesced by the server, so this stays cheap).
async function showPresence(room) {
  if (room !== current) return;
  try {
    const p = await client.presence(room);
    if (room !== current) return;
    const names = p.members.map((m) => (m.connections > 1 ? `${m.user_id} (${m.connections})` : m.user_id));
    $("people").textContent = names.join(", ") || "-";
  } catch {
    $("people").textContent = "-"; // no presence on this server, or too many to list
  }
}

// --8<-- [start:rooms]
async function openRoom(room) {
  current = room;
  $("room-title").textContent = room;
  $("people").textContent = "-";
  notify("");
  renderRooms();
  renderMessages();
  const st = roomState(room);
  try {
    if (!st.joined) {
      await client.joinRoom(room);
      st.joined = true;
      await loadHistory(room);
    }
    showPresence(room);
    $("text").disabled = false;
    $("send").disabled = false;
    $("text").focus();
  } catch (err) {
    notify(`Cannot join ${room}: ${err.message}`);
  }
}

async function loadHistory(room) {
  try {
    const h = await client.history(room);
    setHistory(room, h.messages ?? []);
  } catch {
    // This server keeps no history for the room: only live messages are shown.
  }
}
// --8<-- [end:rooms]

// --8<-- [start:connect]
function connect(name) {
  const base = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  const tokens = config.tokens; // false: no auth extra on the server, so no dev tokens
  client = new TrioRtClient(tokens ? base : `${base}?user=${encodeURIComponent(name)}`, {
    // Called on every (re)connect: a fresh token each time (a restarted server has a new key).
    token: tokens
      ? async () => {
          const r = await fetch(`/token?name=${encodeURIComponent(name)}`);
          if (!r.ok) throw new Error((await r.json()).error);
          return (await r.json()).token;
        }
      : null,
    overflow: "drop_oldest",
    maxDelay: 5,
  });
  window.trioRt = client; // for the console
  client.on("state", ({ state }) => {
    const el = $("state");
    el.dataset.state = state;
    el.textContent = STATE_LABELS[state] ?? state;
  });
  client.on("open", ({ welcome }) => {
    $("server-id").textContent = welcome.server_id ?? "-";
  });
  client.on("message", (m) => {
    if (m.type === "chat_message" && typeof m.room === "string") addMessage(m.room, m);
    else if (m.type === "presence_diff") showPresence(m.room);
    else if (m.type === "error") notify(m.message);
    else if ((m.type === "room_kicked" || m.type === "room_left") && rooms.has(m.room)) {
      roomState(m.room).joined = false; // the client forgot it: a click joins again
      if (m.room === current) notify(`You left ${m.room}.`);
    }
  });
  client.on("dropped", () => {
    notify("You were offline for long: the oldest message you wrote was not sent.");
  });
  client.on("recovery_failed", ({ room, reason }) => {
    const words = RECOVERY_TEXT[reason] ?? "Some messages you missed could not be fetched.";
    if (room === current) notify(words);
  });
  client.on("history", ({ room, messages }) => setHistory(room, messages));
  client.on("rejoin_failed", ({ room, error }) => {
    roomState(room).joined = false;
    if (room === current) notify(`You are no longer in ${room}: ${error.message}`);
  });
  client.on("closed", ({ reason }) => {
    notify(`Disconnected for good${reason ? `: ${reason}` : ""}. Reload the page.`, { sticky: true });
  });
  client.connect();
}
// --8<-- [end:connect]

function showOff() {
  // What this server runs without, and how to turn it on (examples/web_ui.py `off`).
  if (!config.off.length) return;
  $("off-list").replaceChildren(
    ...config.off.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    }),
  );
  $("off").hidden = false;
}

async function showPosts() {
  if (!config.posts) return; // no change streams on this server: the board stays hidden
  $("posts").hidden = false;
  $("poster").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const title = $("post-title").value.trim();
    if (!title) return;
    client.send({ type: "new_post", title });
    $("post-title").value = "";
  });
  const sub = await client.subscribe("posts", {});
  sub.on((event) => $("post-list").prepend(postItem(event)));
}

function postItem(event) {
  // A post's title and author; an update or a delete says so after them.
  const d = event.data ?? {};
  const li = document.createElement("li");
  li.dataset.operation = event.operation;
  const title = document.createElement("span");
  title.className = "post-title";
  title.textContent = d.title ?? "a post";
  const author = document.createElement("span");
  author.className = "post-author";
  const what = { update: " (edited)", delete: " (deleted)" }[event.operation] ?? "";
  author.textContent = (d.author ? `by ${d.author}` : "") + what;
  li.append(title, author);
  return li;
}

async function pollMetrics() {
  try {
    const s = await (await fetch("/demo/stats")).json();
    for (const dd of document.querySelectorAll("[data-metric]")) {
      dd.textContent = s[dd.dataset.metric] ?? "-";
    }
    const counts = new Map();
    const listing = await (await fetch("/demo/rooms")).json();
    for (const { name, members } of listing.rooms) counts.set(name, members);
    renderRooms(counts);
  } catch {
    // the server is restarting: the state indicator says so
  }
}

async function loadConfig() {
  try {
    config = await (await fetch("/demo/config")).json();
  } catch {
    // keep the defaults: tokens on, nothing else
  }
}

$("name").addEventListener("input", () => ($("login-error").textContent = ""));

$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("name").value.trim();
  if (!NAME.test(name)) {
    $("login-error").textContent = `A name is ${$("name-rule").textContent}.`;
    $("name").focus();
    return;
  }
  await loadConfig();
  $("login").hidden = true;
  $("app").hidden = false;
  $("me").textContent = name;
  connect(name);
  renderRooms();
  showOff();
  pollMetrics();
  setInterval(pollMetrics, 2000);
  showPosts().catch((err) => console.warn("posts board:", err));
});

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("text");
  const message = input.value.trim();
  if (!message || current === null) return;
  // Sent at once when connected, queued (and written after the rejoin) while offline.
  client.send({ type: "chat_message", payload: { room: current, message } });
  input.value = "";
});

$("new-room").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("room-name").value.trim();
  if (name) openRoom(name);
  $("room-name").value = "";
});
