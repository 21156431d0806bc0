// The demo page: a chat on trio_rt's browser client (served by the manager at /trio_rt.js).
// Everything user-provided goes into the DOM with textContent, never as HTML.
import { TrioRtClient } from "/trio_rt.js";

const DEFAULT_ROOMS = ["chat:general", "chat:random"];
const $ = (id) => document.getElementById(id);

const rooms = new Map(); // room -> {messages: [], keys: Set}
let current = null;
let client = null;

function keyOf(m) {
  if (m.position) return `${m.position.epoch}:${m.position.offset}`;
  const d = m.data ?? {};
  return `${d.user_id}|${d.timestamp}|${d.message}`;
}

function roomState(room) {
  if (!rooms.has(room)) rooms.set(room, { messages: [], keys: new Set(), joined: false });
  return rooms.get(room);
}

function addMessage(room, m) {
  const st = roomState(room);
  const k = keyOf(m);
  if (st.keys.has(k)) return;
  st.keys.add(k);
  st.messages.push(m);
  if (room === current) appendMessage(m);
}

function setHistory(room, messages) {
  // Replace what is shown with the server's history, keeping live messages it lacks.
  const st = roomState(room);
  const live = st.messages;
  st.messages = [];
  st.keys = new Set();
  for (const m of messages) addMessage(room, m);
  for (const m of live) addMessage(room, m);
  if (room === current) renderMessages();
}

function appendMessage(m) {
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
  const list = $("messages");
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

function renderMessages() {
  $("messages").replaceChildren();
  for (const m of rooms.get(current)?.messages ?? []) appendMessage(m);
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

// --8<-- [start:rooms]
async function openRoom(room) {
  current = room;
  $("room-title").textContent = room;
  $("notice").textContent = "";
  renderRooms();
  renderMessages();
  const st = roomState(room);
  try {
    if (!st.joined) {
      await client.joinRoom(room);
      st.joined = true;
      await loadHistory(room);
    }
    $("text").disabled = false;
    $("send").disabled = false;
    $("text").focus();
  } catch (err) {
    $("notice").textContent = `cannot join ${room}: ${err.message}`;
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
  client = new TrioRtClient(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`, {
    // Called on every (re)connect: a fresh token each time (a restarted server has a new key).
    token: async () => {
      const r = await fetch(`/token?name=${encodeURIComponent(name)}`);
      if (!r.ok) throw new Error((await r.json()).error);
      return (await r.json()).token;
    },
    overflow: "drop_oldest",
    maxDelay: 5,
  });
  window.trioRt = client; // for the console
  client.on("state", ({ state }) => {
    const el = $("state");
    el.dataset.state = state;
    el.textContent = state;
  });
  client.on("open", ({ welcome }) => {
    $("server-id").textContent = welcome.server_id ?? "-";
  });
  // A new outage clears the last one's notice (a recovery notice stays until then).
  client.on("reconnecting", () => {
    $("notice").textContent = "";
  });
  client.on("message", (m) => {
    if (m.type === "chat_message" && typeof m.room === "string") addMessage(m.room, m);
    else if (m.type === "error") $("notice").textContent = `${m.code}: ${m.message}`;
    else if ((m.type === "room_kicked" || m.type === "room_left") && rooms.has(m.room)) {
      roomState(m.room).joined = false; // the client forgot it: a click joins again
      if (m.room === current) $("notice").textContent = `you left ${m.room}`;
    }
  });
  client.on("dropped", () => {
    $("notice").textContent = "offline for long: the oldest unsent message was dropped";
  });
  client.on("recovery_failed", ({ room, reason }) => {
    if (room === current) $("notice").textContent = `missed messages could not be replayed (${reason}); reloading history`;
  });
  client.on("history", ({ room, messages }) => setHistory(room, messages));
  client.on("rejoin_failed", ({ room, error }) => {
    roomState(room).joined = false;
    if (room === current) $("notice").textContent = `left ${room}: ${error.message}`;
  });
  client.on("closed", ({ reason }) => {
    $("notice").textContent = `disconnected for good${reason ? `: ${reason}` : ""}`;
  });
  client.connect();
}
// --8<-- [end:connect]

async function showPosts() {
  const r = await fetch("/demo/config");
  const config = await r.json();
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
  sub.on((event) => {
    const li = document.createElement("li");
    const d = event.data ?? {};
    li.textContent = `${event.operation}: ${d.title ?? JSON.stringify(event.key)}`;
    $("post-list").prepend(li);
  });
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

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("name").value.trim();
  if (!name) return;
  $("login").hidden = true;
  $("app").hidden = false;
  $("me").textContent = name;
  connect(name);
  renderRooms();
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
