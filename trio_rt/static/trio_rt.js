// trio_rt browser client: a dependency-free ES module, served by every WebSocketManager at
// GET /trio_rt.js. The contract is in docs/browser.md; it mirrors trio_rt.client
// (docs/client.md): reconnection with exponential backoff and full jitter, a bounded ordered
// offline queue with a named overflow policy, rooms rejoined and table subscriptions renewed
// after a reconnect, recovery from the last stream positions, a token provider called on
// every (re)connect, request/reply with ids, and events.
//
// The pure parts (Backoff, Outbox, PositionTracker, classifyClose) have no I/O and are unit
// tested with `node --test` (tests/js/).

export const VERSION = "0.1.0";
export const SUBPROTOCOL = "trio_rt.v1";
export const STATES = Object.freeze(["connecting", "open", "reconnecting", "closed"]);

/** An `error` reply from the server: `code` and `message` as sent (docs/protocol.md). */
export class ServerError extends Error {
  constructor(reply) {
    super(`${reply.code}: ${reply.message}`);
    this.name = "ServerError";
    this.code = reply.code;
    this.reply = reply;
  }
}

/** The outbox is full while offline and the overflow policy is "raise". */
export class QueueFull extends Error {
  constructor(size) {
    super(`the offline queue is full (${size} messages)`);
    this.name = "QueueFull";
  }
}

/** The client is closed, or the connection a request was written on was lost. */
export class ClientClosed extends Error {
  constructor(message = "the client is closed") {
    super(message);
    this.name = "ClientClosed";
  }
}

// ---------------------------------------------------------------------------------------------
// Pure logic

/**
 * Exponential backoff with jitter, the same arithmetic as trio_rt.client.Backoff:
 *   delay(n) = min(maxDelay, initialDelay * multiplier**n) * (1 - jitter * U[0,1))
 * in seconds. jitter=1 (the default here) is "full jitter": a delay lies in (0, base].
 */
export class Backoff {
  constructor({ initialDelay = 0.5, maxDelay = 20, multiplier = 2, jitter = 1 } = {}) {
    for (const [name, v] of Object.entries({ initialDelay, maxDelay, multiplier })) {
      if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
        throw new RangeError(`${name} must be a positive number, not ${v}`);
      }
    }
    if (multiplier < 1) throw new RangeError("multiplier must be >= 1");
    if (maxDelay < initialDelay) throw new RangeError("maxDelay must be >= initialDelay");
    if (typeof jitter !== "number" || !(jitter >= 0 && jitter <= 1)) {
      throw new RangeError("jitter must be in [0, 1]");
    }
    Object.assign(this, { initialDelay, maxDelay, multiplier, jitter });
  }

  baseDelay(n) {
    // Capped before it can overflow to Infinity.
    const exp = Math.min(n, 1024);
    return Math.min(this.maxDelay, this.initialDelay * this.multiplier ** exp);
  }

  delay(n, random = Math.random) {
    return this.baseDelay(n) * (1 - this.jitter * random());
  }
}

/** Overflow policies of the offline queue. */
export const OVERFLOW = Object.freeze(["raise", "drop_oldest"]);

/**
 * A bounded FIFO of encoded messages waiting for a connection. When it is full, `push`
 * applies the policy: "raise" throws QueueFull (nothing is queued), "drop_oldest" discards the
 * oldest entry and returns it.
 */
export class Outbox {
  constructor(size = 1000, overflow = "raise") {
    if (!Number.isInteger(size) || size < 1) throw new RangeError("queue size must be >= 1");
    if (!OVERFLOW.includes(overflow)) {
      throw new RangeError(`overflow must be one of ${OVERFLOW.join(", ")}, not ${overflow}`);
    }
    this.size = size;
    this.overflow = overflow;
    this.items = [];
    this.dropped = 0;
  }

  get length() {
    return this.items.length;
  }

  /** Queue `item`; returns the entry dropped to make room, or undefined. */
  push(item) {
    let dropped;
    if (this.items.length >= this.size) {
      if (this.overflow === "raise") throw new QueueFull(this.size);
      dropped = this.items.shift();
      this.dropped += 1;
    }
    this.items.push(item);
    return dropped;
  }

  /** Remove and return every entry, oldest first. */
  drain() {
    const out = this.items;
    this.items = [];
    return out;
  }

  clear() {
    const n = this.items.length;
    this.items = [];
    return n;
  }
}

function isPosition(p) {
  return (
    p !== null &&
    typeof p === "object" &&
    Number.isInteger(p.offset) &&
    typeof p.epoch === "string"
  );
}

// --8<-- [start:positions]
/** How many offsets a stream remembers per epoch to tell a duplicate from a late message. */
export const RECENT_OFFSETS = 1024;

/**
 * Per stream ("room:<name>", "sub:<key>"): the last position (sent as `since` to recover), and
 * the offsets this client received in that position's epoch. The duplicate rule, the same as
 * trio_rt.client's: `advance` returns false for an offset this client already received
 * (replayed or live: a duplicate the client drops), true for any other, also one lower than
 * the greatest received (a *late* message: still being written when the client joined, or
 * delivered after the server's reorder window). The positions of `room_joined`, `subscribed`
 * and `history` replies (`reset`, `observe`) mark nothing as received.
 *
 * Memory is bounded: the `recent` greatest offsets received are remembered; only when that
 * window overflows does its smallest offset leave it and become the floor, at or below which
 * offsets count as received. Until then the floor is -Infinity.
 */
export class PositionTracker {
  constructor(recent = RECENT_OFFSETS) {
    this.positions = new Map();
    this.recent = recent;
  }

  get(stream) {
    const p = this.positions.get(stream);
    return p === undefined ? undefined : { offset: p.offset, epoch: p.epoch };
  }

  _fresh(stream, position) {
    const cur = { offset: position.offset, epoch: position.epoch, seen: new Set(), order: [] };
    cur.floor = -Infinity;
    this.positions.set(stream, cur);
    return cur;
  }

  /** A message received at `position`; false when this client already received it. */
  advance(stream, position) {
    if (!isPosition(position)) return true; // no position: nothing to compare
    let cur = this.positions.get(stream);
    if (cur === undefined || cur.epoch !== position.epoch) cur = this._fresh(stream, position);
    const o = position.offset;
    if (o <= cur.floor || cur.seen.has(o)) return false;
    cur.seen.add(o);
    // `order`: the remembered offsets, ascending (usually appended at the end).
    let i = cur.order.length;
    while (i > 0 && cur.order[i - 1] > o) i -= 1;
    cur.order.splice(i, 0, o);
    if (cur.order.length > this.recent) {
      const forgotten = cur.order.shift();
      cur.seen.delete(forgotten);
      if (forgotten > cur.floor) cur.floor = forgotten;
    }
    if (o > cur.offset) cur.offset = o;
    return true;
  }

  /** Take the server's position (`room_joined`, `subscribed`), newer or not; it marks
   * nothing as received. Offsets received in the same epoch stay received. */
  reset(stream, position) {
    if (!isPosition(position)) {
      this.positions.delete(stream);
      return;
    }
    const cur = this.positions.get(stream);
    if (cur !== undefined && cur.epoch === position.epoch) cur.offset = position.offset;
    else this._fresh(stream, position);
  }

  /** Move the position forward to `position` (a `history` page's), marking nothing. */
  observe(stream, position) {
    if (!isPosition(position)) return;
    const cur = this.positions.get(stream);
    if (cur === undefined || cur.epoch !== position.epoch) this._fresh(stream, position);
    else if (position.offset > cur.offset) cur.offset = position.offset;
  }

  forget(stream) {
    this.positions.delete(stream);
  }
}
// --8<-- [end:positions]

/** Close codes after which reconnecting unchanged cannot help (as trio_rt.client). */
export const FATAL_CLOSE_CODES = Object.freeze([1002, 1003, 1007, 1008, 1010, 4003]);

/**
 * What to do after a close: "stop" (fatal), "new_token" (4004: the token expired: reconnect
 * only with a fresh token from the provider), or "retry".
 */
export function classifyClose(code, { hasTokenProvider = false } = {}) {
  if (FATAL_CLOSE_CODES.includes(code)) return "stop";
  if (code === 4004) return hasTokenProvider ? "new_token" : "stop";
  return "retry";
}

// ---------------------------------------------------------------------------------------------
// The client

const RECOVERY_EVENTS = ["recovery_failed", "history"];

/**
 * A reconnecting trio_rt client for browsers (and any runtime with a WebSocket class).
 *
 *   const client = new TrioRtClient("ws://host:3001/", { token: () => fetchToken() });
 *   client.on("message", (m) => ...);
 *   client.connect();
 *   await client.joinRoom("chat:general");
 *   client.send({ type: "chat_message", payload: { room: "chat:general", message: "hi" } });
 *
 * States: connecting -> open -> reconnecting -> open ... -> closed (final).
 * Events (client.on(name, fn), returns an unsubscribe function): "state" {state, previous},
 * "open" {welcome, connection}, "close" {code, reason, willReconnect}, "reconnecting"
 * {attempt, delay}, "message" (every server message not consumed as a reply), "error"
 * (a ServerError not tied to a request), "rejoin_failed" {room, error},
 * "recovery_failed" {room | table, reason, subscription}, "history" {room, messages,
 * position, reason}, "dropped" {message} (overflow "drop_oldest"), "closed" {code, reason}.
 */
export class TrioRtClient {
  constructor(url, options = {}) {
    const {
      token = null, // string, or a function (maybe async) returning the token, or null
      protocols = [SUBPROTOCOL],
      initialDelay = 0.5,
      maxDelay = 20,
      multiplier = 2,
      jitter = 1,
      maxAttempts = null, // consecutive failed attempts before giving up; null: forever
      queueSize = 1000,
      overflow = "raise",
      requestTimeout = 10, // seconds; null: none
      openTimeout = 10, // seconds for one attempt: token, handshake, welcome
      refetchHistory = true, // on recovered:false, request `history` and emit "history"
      historyLimit = 50,
      WebSocket: WebSocketImpl = globalThis.WebSocket,
      random = Math.random,
      timers = globalThis,
    } = options;
    if (typeof url !== "string" && !(url instanceof URL)) throw new TypeError("url must be a string");
    if (maxAttempts !== null && !(Number.isInteger(maxAttempts) && maxAttempts >= 1)) {
      throw new RangeError("maxAttempts must be a positive integer or null");
    }
    if (typeof WebSocketImpl !== "function") throw new TypeError("no WebSocket implementation");
    this.url = String(url);
    this.backoff = new Backoff({ initialDelay, maxDelay, multiplier, jitter });
    this.outbox = new Outbox(queueSize, overflow);
    this.positions = new PositionTracker();
    this.state = "closed";
    this.welcome = null;
    this.closeCode = null;
    this.stats = {
      connections: 0,
      failedAttempts: 0,
      sent: 0,
      received: 0,
      duplicates: 0,
      resent: 0,
    };
    this._token = token;
    this._protocols = [...protocols];
    this._maxAttempts = maxAttempts;
    this._requestTimeout = requestTimeout;
    this._openTimeout = openTimeout;
    this._refetchHistory = refetchHistory;
    this._historyLimit = historyLimit;
    this._WebSocket = WebSocketImpl;
    this._random = random;
    this._timers = timers;
    this._listeners = new Map();
    this._ws = null;
    this._live = false; // the current connection got its welcome: joins can be written
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer, kind}
    // Acknowledged publishes not answered yet, in order: id -> {frame, room, resolve, reject,
    // written}. Written again (same id: the server stores it once) on every new connection.
    this._publishes = new Map();
    this._queueSize = queueSize;
    this._rooms = new Map(); // room -> {waiters: [{resolve, reject}], joined: bool}
    this._subs = new Map(); // key -> Subscription
    this._subBySid = new Map();
    // Changes replayed before `subscribed` names their sid: held while a subscribe for their
    // table is in flight (bounded), delivered once a reply claims them.
    this._early = new Map(); // sid -> [message]
    this._subscribing = new Map(); // table -> subscribe requests in flight
    this._abandoned = new Set(); // sids unsubscribed: their changes still in flight are dropped
    this._attempt = 0; // failed attempts in a row (maxAttempts)
    this._attemptSeq = 0; // numbers attempts: a timed-out attempt's late results are ignored
    this._retries = 0; // retries scheduled in the current outage (backoff exponent)
    this._everOpened = false;
    this._retryTimer = null;
    this._openTimer = null;
    this._stopped = true;
    this._used = false;
  }

  // -- events ---------------------------------------------------------------------------------
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  _emit(type, detail) {
    for (const fn of [...(this._listeners.get(type) ?? [])]) {
      try {
        fn(detail);
      } catch (err) {
        // A listener's bug must not break the connection: report it asynchronously.
        this._timers.setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit("state", { state, previous });
  }

  // -- lifecycle ------------------------------------------------------------------------------
  /** Start connecting (once per client). Returns the client. */
  connect() {
    if (this._used) throw new Error("a TrioRtClient connects once; create a new one");
    this._used = true;
    this._stopped = false;
    this._setState("connecting");
    this._open();
    return this;
  }

  /** Close for good with 1000: pending requests reject with ClientClosed, the queue is discarded. */
  close(code = 1000, reason = "") {
    this._stop(code, reason, true);
  }

  /** A promise resolved when the state is "open" (rejected with ClientClosed when closed). */
  ready() {
    if (this.state === "open") return Promise.resolve(this.welcome);
    if (this._stopped && this._used) return Promise.reject(new ClientClosed());
    return new Promise((resolve, reject) => {
      const offOpen = this.on("open", (e) => {
        offOpen();
        offClosed();
        resolve(e.welcome);
      });
      const offClosed = this.on("closed", () => {
        offOpen();
        offClosed();
        reject(new ClientClosed());
      });
    });
  }

  async _open() {
    // One attempt: token, handshake and welcome within openTimeout seconds.
    const attempt = ++this._attemptSeq;
    let gotWelcome = false;
    if (this._openTimeout) {
      this._openTimer = this._timers.setTimeout(() => {
        if (attempt !== this._attemptSeq || gotWelcome || this._stopped) return;
        this._attemptSeq += 1; // whatever this attempt still does is ignored
        const ws = this._ws;
        this._ws = null;
        if (ws !== null) {
          try {
            ws.close(4000, "open timeout");
          } catch {
            // already closing
          }
        }
        this._connectionLost(1006, "open timeout", false, false);
      }, this._openTimeout * 1000);
    }
    let token = null;
    try {
      if (typeof this._token === "function") token = await this._token();
      else token = this._token;
    } catch (err) {
      if (attempt !== this._attemptSeq || this._stopped) return;
      this._timers.clearTimeout(this._openTimer);
      // A provider that fails is a failed attempt (e.g. the token endpoint is down too).
      this._attemptFailed(1006, `token provider failed: ${err?.message ?? err}`);
      return;
    }
    if (attempt !== this._attemptSeq || this._stopped) return;
    const protocols = [...this._protocols];
    if (token) protocols.push(`bearer.${token}`);
    let ws;
    try {
      ws = new this._WebSocket(this.url, protocols);
    } catch (err) {
      this._stop(1006, `cannot open a WebSocket: ${err?.message ?? err}`, false);
      return;
    }
    this._ws = ws;
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(typeof ev.data === "string" ? ev.data : String(ev.data));
      } catch {
        return; // not JSON: dropped, like trio_rt.client
      }
      if (msg === null || typeof msg !== "object" || typeof msg.type !== "string") return;
      this.stats.received += 1;
      if (!gotWelcome) {
        if (msg.type === "welcome") {
          gotWelcome = true;
          this._timers.clearTimeout(this._openTimer);
          this._onWelcome(msg);
        } else {
          this._emit("message", msg); // e.g. an error sent before the welcome
        }
        return;
      }
      this._onMessage(msg);
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._live = false;
      this._timers.clearTimeout(this._openTimer);
      const wasOpen = this.state === "open";
      this._connectionLost(ev.code ?? 1006, ev.reason ?? "", gotWelcome, wasOpen);
    };
    ws.onerror = () => {}; // always followed by close
  }

  _onWelcome(welcome) {
    this.welcome = welcome;
    this._live = true;
    this.stats.connections += 1;
    // Rejoin every remembered room and renew every subscription, from the last positions;
    // the state becomes "open" once all of them are answered, then the queue is written.
    const waits = [];
    for (const room of this._rooms.keys()) waits.push(this._sendJoin(room, true));
    for (const sub of this._subs.values()) waits.push(this._sendSubscribe(sub, true));
    Promise.allSettled(waits).then(() => {
      if (this._ws === null || this.welcome !== welcome || this._stopped) return;
      this._attempt = 0;
      this._retries = 0;
      this._everOpened = true;
      this._setState("open");
      this._emit("open", { welcome, connection: this.stats.connections });
      this._writePublishes();
      this._flush();
    });
  }

  _flush() {
    const ws = this._ws;
    if (ws === null || this.state !== "open") return;
    for (const frame of this.outbox.drain()) {
      ws.send(frame);
      this.stats.sent += 1;
    }
  }

  _connectionLost(code, reason, gotWelcome, wasOpen) {
    this.closeCode = code;
    // Requests written on this connection cannot be answered any more; joins and
    // subscriptions are retried by the next connection instead.
    const lost = new ClientClosed(`connection lost (${code}) before the reply`);
    for (const p of this._pending.values()) {
      this._timers.clearTimeout(p.timer);
      p.reject(lost);
    }
    this._pending.clear();
    this._early.clear();
    this._abandoned.clear();
    for (const sub of this._subs.values()) {
      if (sub.sid !== null) this._subBySid.delete(sub.sid);
      sub.sid = null;
    }
    if (this._stopped) return;
    const verdict = classifyClose(code, { hasTokenProvider: typeof this._token === "function" });
    if (verdict === "stop") {
      this._emit("close", { code, reason, willReconnect: false });
      this._stop(code, reason, false);
      return;
    }
    this._emit("close", { code, reason, willReconnect: true });
    this._attemptFailed(code, reason, wasOpen);
  }

  _attemptFailed(code, reason, wasOpen = false) {
    if (this._stopped) return;
    if (!wasOpen) {
      this.stats.failedAttempts += 1;
      this._attempt += 1;
      if (this._maxAttempts !== null && this._attempt >= this._maxAttempts) {
        this._stop(code, `gave up after ${this._attempt} attempts: ${reason}`, false);
        return;
      }
    }
    // n is 0 for the first retry of an outage and grows by one per retry (as trio_rt.client).
    const n = this._retries;
    this._retries += 1;
    const delay = this.backoff.delay(n, this._random);
    this._setState(this._everOpened ? "reconnecting" : "connecting");
    this._emit("reconnecting", { attempt: this._retries, delay, code, reason });
    this._retryTimer = this._timers.setTimeout(() => {
      this._retryTimer = null;
      if (!this._stopped) this._open();
    }, delay * 1000);
  }

  _stop(code, reason, byUser) {
    if (this._stopped && this.state === "closed") return;
    this._stopped = true;
    this.closeCode = code;
    this._timers.clearTimeout(this._retryTimer);
    this._timers.clearTimeout(this._openTimer);
    const ws = this._ws;
    this._ws = null;
    this._live = false;
    if (ws !== null) {
      try {
        // Browsers accept only 1000 and 3000-4999 from applications.
        const ok = code === 1000 || (code >= 3000 && code <= 4999);
        ws.close(byUser && ok ? code : 1000, byUser ? reason : "");
      } catch {
        // already closing
      }
    }
    const err = new ClientClosed(reason ? `client closed: ${reason}` : "client closed");
    for (const p of this._pending.values()) {
      this._timers.clearTimeout(p.timer);
      p.reject(err);
    }
    this._pending.clear();
    for (const p of this._publishes.values()) p.reject(err);
    this._publishes.clear();
    for (const entry of this._rooms.values()) for (const w of entry.waiters) w.reject(err);
    for (const sub of this._subs.values()) for (const w of sub.waiters) w.reject(err);
    this.outbox.clear();
    this._setState("closed");
    this._emit("closed", { code, reason, byUser });
  }

  // -- sending --------------------------------------------------------------------------------
  /**
   * Send a message (an object with a string `type`). Written at once when open; otherwise
   * queued (bounded; the overflow policy applies) and written in order after the next
   * (re)connect, after the rooms are rejoined. Throws ClientClosed once closed, QueueFull
   * ("raise" policy) when the queue is full. At most once: a message written on a
   * connection that then breaks is not resent.
   */
  send(message) {
    if (this._stopped) throw new ClientClosed();
    if (message === null || typeof message !== "object" || typeof message.type !== "string") {
      throw new TypeError("a message is an object with a string 'type'");
    }
    const frame = JSON.stringify(message);
    if (this.state === "open" && this._ws !== null) {
      this._ws.send(frame);
      this.stats.sent += 1;
      return;
    }
    const dropped = this.outbox.push(frame);
    if (dropped !== undefined) this._emit("dropped", { message: JSON.parse(dropped) });
  }

  /**
   * Acknowledged publish: `data` into `room`, resolved with the server's `ack`
   * ({type: "ack", room, position, id}: where it was stored; position null in a room without
   * history). The server must run a `Publisher` (docs/protocol.md). `id` names the message
   * (default: a random UUID); until the server answers, the publish is written again with
   * the same id after every reconnect (after the rooms are rejoined, before the queued
   * messages), and the server stores and delivers it once. Rejects with ServerError when the
   * server refuses it (not_in_room, not_permitted, invalid_field) or cannot do it now
   * (unavailable: publish again with the same id), ClientClosed when the client closes,
   * QueueFull when `queueSize` publishes already wait for their ack.
   */
  publish(room, data, { id = null } = {}) {
    if (this._stopped) return Promise.reject(new ClientClosed());
    if (typeof room !== "string" || !room) return Promise.reject(new TypeError("room name"));
    const pid = id ?? newPublishId(this._random);
    if (this._publishes.has(pid)) {
      return Promise.reject(new Error(`a publish with id ${pid} is already waiting for its ack`));
    }
    if (this._publishes.size >= this._queueSize) {
      return Promise.reject(new QueueFull(this._queueSize));
    }
    const frame = JSON.stringify({ type: "publish", room, data, id: pid });
    return new Promise((resolve, reject) => {
      const entry = { frame, room, resolve, reject, written: false };
      this._publishes.set(pid, entry);
      if (this.state === "open" && this._ws !== null) this._writePublish(entry);
    });
  }

  /** Publishes waiting for their ack. */
  get unacknowledged() {
    return this._publishes.size;
  }

  _writePublish(entry) {
    if (entry.written) this.stats.resent += 1;
    entry.written = true;
    this._ws.send(entry.frame);
    this.stats.sent += 1;
  }

  /** A new connection is open: every publish not answered is written (again), in order. */
  _writePublishes() {
    if (this._ws === null || this.state !== "open") return;
    for (const entry of this._publishes.values()) this._writePublish(entry);
  }

  /**
   * Send `message` with a fresh `id` and resolve with the reply carrying that id (reject
   * with ServerError on an `error` reply, ClientClosed if the connection is lost first, or
   * an Error after `requestTimeout` seconds).
   */
  request(message, { kind = "request" } = {}) {
    const id = this._nextId++;
    const data = { ...message, id };
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, kind, timer: null, replies: REPLY_TYPES[message.type] };
      this._pending.set(id, entry);
      try {
        this.send(data);
      } catch (err) {
        this._pending.delete(id);
        reject(err);
        return;
      }
      this._armTimeout(id, entry);
    });
  }

  _armTimeout(id, entry) {
    if (!this._requestTimeout) return;
    entry.timer = this._timers.setTimeout(() => {
      if (this._pending.get(id) === entry) {
        this._pending.delete(id);
        entry.reject(new Error(`no reply to request ${id} in ${this._requestTimeout} s`));
      }
    }, this._requestTimeout * 1000);
  }

  /** Like request, but written on the current connection only (rejoins, resubscribes). */
  _requestNow(message, kind) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, kind, timer: null, replies: REPLY_TYPES[message.type] };
      this._pending.set(id, entry);
      this._ws.send(JSON.stringify({ ...message, id }));
      this._armTimeout(id, entry);
    });
  }

  /**
   * In-band token refresh: get a fresh token from the provider and send
   * `{"type": "refresh", "token"}`; resolves with the server's `refreshed` reply (rejects with
   * ServerError when the server refuses it or does not support refresh).
   */
  async refresh() {
    if (typeof this._token !== "function") throw new TypeError("refresh needs a token provider");
    const token = await this._token();
    return this.request({ type: "refresh", token });
  }

  // -- rooms ----------------------------------------------------------------------------------
  /** The rooms joined or being joined (rejoined after every reconnect). */
  get rooms() {
    return [...this._rooms.keys()];
  }

  /**
   * Join `room` and remember it. Resolves with the `room_joined` reply; rejects with
   * ServerError (room_full, not_permitted...) and forgets the room. Idempotent.
   */
  joinRoom(room) {
    if (this._stopped) return Promise.reject(new ClientClosed());
    if (typeof room !== "string" || !room) return Promise.reject(new TypeError("room name"));
    let entry = this._rooms.get(room);
    const promise = new Promise((resolve, reject) => {
      if (entry === undefined) {
        entry = { waiters: [], joined: false };
        this._rooms.set(room, entry);
      }
      entry.waiters.push({ resolve, reject });
    });
    if (this._live && !entry.sending) this._sendJoin(room, false);
    return promise;
  }

  /** Send a join for a remembered room; the returned promise never rejects. */
  _sendJoin(room, rejoin) {
    const entry = this._rooms.get(room);
    const since = this.positions.get(`room:${room}`);
    const msg = { type: "join_room", room };
    if (since !== undefined) msg.since = since;
    entry.sending = true;
    return this._requestNow(msg, "join").then(
      (reply) => {
        entry.sending = false;
        if (this._rooms.get(room) !== entry) return;
        entry.joined = true;
        this._roomJoined(room, reply);
        for (const w of entry.waiters.splice(0)) w.resolve(reply);
      },
      (err) => {
        entry.sending = false;
        if (err instanceof ServerError) {
          if (this._rooms.get(room) === entry) this._rooms.delete(room);
          this.positions.forget(`room:${room}`);
          if (rejoin && entry.waiters.length === 0) this._emit("rejoin_failed", { room, error: err });
          for (const w of entry.waiters.splice(0)) w.reject(err);
        } else if (!(err instanceof ClientClosed)) {
          // A timeout: the callers hear it; the room stays remembered and is joined again
          // by the next connection. A lost connection: the next connection joins again.
          for (const w of entry.waiters.splice(0)) w.reject(err);
        }
      },
    );
  }

  _roomJoined(room, reply) {
    // The room's position, sent as `since` after a reconnect. It marks nothing as received:
    // an offset at or below it still being written when the client joined is delivered later.
    if (reply.position !== undefined) this.positions.reset(`room:${room}`, reply.position);
    if (reply.recovered === false) {
      this._recoveryLost(room, reply.reason ?? "unknown", reply.position);
    }
  }

  /** What `room` missed cannot be replayed: "recovery_failed", then the latest page. */
  _recoveryLost(room, reason, position) {
    this._emit("recovery_failed", { room, reason, position });
    if (this._refetchHistory) {
      this.history(room).then(
        (h) => this._emit("history", { room, messages: h.messages, position: h.position, reason }),
        () => {}, // no history for this room (or the connection went): nothing to show
      );
    }
  }

  /** Leave `room` and forget it (it is not rejoined). Resolves with `room_left` or null. */
  leaveRoom(room) {
    const entry = this._rooms.get(room);
    this._rooms.delete(room);
    this.positions.forget(`room:${room}`);
    if (entry !== undefined) {
      const err = new ClientClosed(`left room ${room} before it was joined`);
      for (const w of entry.waiters.splice(0)) w.reject(err);
    }
    if (entry?.joined && this.state === "open") return this.request({ type: "leave_room", room });
    return Promise.resolve(null);
  }

  /**
   * Request a room's history: resolves with `{type:"history", room, messages, position}`.
   * Without `before`, the reply also moves the room's position forward (so a later recovery
   * starts after what was shown); the page's offsets are not marked as received.
   */
  async history(room, { limit = this._historyLimit, before = undefined } = {}) {
    const msg = { type: "history", room, limit };
    if (before !== undefined) msg.before = before;
    const reply = await this.request(msg);
    if (before === undefined && this._rooms.has(room)) {
      this.positions.observe(`room:${room}`, reply.position);
    }
    return reply;
  }

  // -- presence (docs/presence.md) --------------------------------------------------------------
  /**
   * Who is in `room`, across servers: resolves with `{type:"presence", room, members:
   * [{user_id, connections, info}], users, connections, version}`. Rejects with ServerError
   * (`not_in_room`, `too_large` with the counts, `unknown_type` without presence on the server).
   * Join/leave events of rooms that have them arrive as "message" events of type
   * `presence_diff` ({room, joins:[{user_id, info, version}], leaves:[{user_id, version}],
   * version} or {room, resync: true, version}).
   */
  presence(room) {
    return this.request({ type: "presence", room });
  }

  /** How many are in `room`: resolves with `{type:"presence_stats", room, users, connections, version}`. */
  presenceStats(room) {
    return this.request({ type: "presence_stats", room });
  }

  // -- table subscriptions --------------------------------------------------------------------
  /**
   * Subscribe to changes of `table` matching `filters`; resolves with a Subscription whose
   * `on(fn)` receives each change event. Renewed (from its last position) after reconnects.
   */
  subscribe(table, filters = {}) {
    if (this._stopped) return Promise.reject(new ClientClosed());
    const sub = new Subscription(this, table, filters);
    this._subs.set(sub.key, sub);
    const promise = new Promise((resolve, reject) => sub.waiters.push({ resolve, reject }));
    if (this._live) this._sendSubscribe(sub, false);
    return promise;
  }

  _sendSubscribe(sub, renew) {
    const since = this.positions.get(`sub:${sub.key}`);
    const msg = { type: "subscribe", table: sub.table, filters: sub.filters };
    if (since !== undefined) msg.since = since;
    const table = sub.table;
    this._subscribing.set(table, (this._subscribing.get(table) ?? 0) + 1);
    const settled = (sid) => {
      const left = this._subscribing.get(table) - 1;
      if (left > 0) this._subscribing.set(table, left);
      else this._subscribing.delete(table);
      const early = this._early.get(sid) ?? [];
      this._early.delete(sid);
      if (left <= 0) {
        // Held changes no subscribe in flight can claim: not a subscription of this client's
        // (e.g. a raw `subscribe` the app sent): delivered untouched.
        for (const [other, held] of [...this._early]) {
          if (held[0]?.table !== table) continue;
          this._early.delete(other);
          for (const m of held) this._emit("message", m);
        }
      }
      return early;
    };
    return this._requestNow(msg, "subscribe").then(
      (reply) => {
        const sid = reply.subscription;
        const early = settled(sid);
        if (this._subs.get(sub.key) !== sub) {
          // Unsubscribed while the request was in flight: drop it on the server too.
          this._abandoned.add(sid);
          this._requestNow({ type: "unsubscribe", subscription: sid }, "unsubscribe").catch(
            () => {}, // the connection went: the subscription went with it
          );
          return;
        }
        sub.sid = sid;
        this._subBySid.set(sub.sid, sub);
        for (const m of early) this._onDataUpdate(m);
        const stream = `sub:${sub.key}`;
        this.positions.reset(stream, reply.position); // marks nothing as received
        if (reply.recovered === false && since !== undefined) {
          this._emit("recovery_failed", {
            table: sub.table,
            subscription: sub,
            reason: reply.reason ?? "unknown",
          });
        }
        for (const w of sub.waiters.splice(0)) w.resolve(sub);
      },
      (err) => {
        settled(undefined);
        if (err instanceof ServerError) {
          this._subs.delete(sub.key);
          if (renew && sub.waiters.length === 0) {
            this._emit("rejoin_failed", { table: sub.table, subscription: sub, error: err });
          }
          for (const w of sub.waiters.splice(0)) w.reject(err);
        } else if (!(err instanceof ClientClosed)) {
          for (const w of sub.waiters.splice(0)) w.reject(err);
        }
      },
    );
  }

  async _unsubscribe(sub) {
    this._subs.delete(sub.key);
    this.positions.forget(`sub:${sub.key}`);
    const sid = sub.sid;
    if (sid === null) return null;
    this._subBySid.delete(sid);
    if (this.state !== "open") return null;
    this._abandoned.add(sid);
    return this.request({ type: "unsubscribe", subscription: sid });
  }

  // -- receiving ------------------------------------------------------------------------------
  _onDataUpdate(msg) {
    if (this._abandoned.has(msg.subscription)) return; // unsubscribed, still in flight
    const sub = this._subBySid.get(msg.subscription);
    if (sub !== undefined) {
      if (!this.positions.advance(`sub:${sub.key}`, msg.event?.position)) {
        this.stats.duplicates += 1;
        return;
      }
      sub._deliver(msg.event, msg);
    }
    this._emit("message", msg);
  }

  /** Is `msg` the reply to pending request `p`? Its id matched; its type must be a reply's:
   * `error`, or the server's reply type for a built-in request (`REPLY_TYPES`), or for an
   * application's own request type anything but a room message of a room this client is in
   * (which carries its own position). An application field named `id` in a room message
   * does not make it a reply. */
  _answers(p, msg) {
    if (msg.type === "error") return true;
    if (p.replies !== undefined) return p.replies.includes(msg.type);
    return !(typeof msg.room === "string" && this._rooms.has(msg.room) && isPosition(msg.position));
  }

  _onMessage(msg) {
    // The answer to a publish: consumed, settles it.
    const pub = msg.id !== undefined ? this._publishes.get(msg.id) : undefined;
    if (pub !== undefined && (msg.type === "ack" || msg.type === "error")) {
      this._publishes.delete(msg.id);
      if (msg.type === "error") pub.reject(new ServerError(msg));
      else pub.resolve(msg);
      return;
    }
    // Replies to our requests are consumed; errors with our ids reject them.
    const p = msg.id !== undefined ? this._pending.get(msg.id) : undefined;
    if (p !== undefined && this._answers(p, msg)) {
      this._pending.delete(msg.id);
      this._timers.clearTimeout(p.timer);
      if (msg.type === "error") p.reject(new ServerError(msg));
      else p.resolve(msg);
      return;
    }
    if (msg.type === "data_update") {
      const claimable =
        msg.table === undefined ? this._subscribing.size > 0 : this._subscribing.has(msg.table);
      if (!this._subBySid.has(msg.subscription) && claimable) {
        const held = this._early.get(msg.subscription) ?? [];
        if (held.length < MAX_EARLY_UPDATES) held.push(msg);
        this._early.set(msg.subscription, held);
        return;
      }
      this._onDataUpdate(msg);
      return;
    }
    // A room message is positioned by its own offset; a `room_gap`, a `room_joined` or a
    // `history` page (replies reaching here unclaimed: timed out, or sent raw) only carries a
    // position of the room's, which marks nothing as received.
    const positioned =
      msg.position !== undefined &&
      msg.type !== "room_gap" &&
      msg.type !== "room_joined" &&
      !(msg.type === "history" && Array.isArray(msg.messages));
    if (typeof msg.room === "string" && positioned && this._rooms.has(msg.room)) {
      if (!this.positions.advance(`room:${msg.room}`, msg.position)) {
        this.stats.duplicates += 1; // already seen (recovery overlapping live delivery)
        return;
      }
    }
    if ((msg.type === "room_kicked" || msg.type === "room_left") && msg.id === undefined) {
      this._rooms.delete(msg.room);
      this.positions.forget(`room:${msg.room}`);
    }
    if (msg.type === "room_gap" && this._rooms.has(msg.room)) {
      // The server says this connection missed messages it cannot send: as a failed
      // recovery. The message itself is delivered untouched below.
      this._recoveryLost(msg.room, msg.reason ?? "gap", msg.position);
    }
    if (msg.type === "error") this._emit("error", new ServerError(msg));
    this._emit("message", msg);
  }
}

const MAX_EARLY_UPDATES = 10000;

/** A publish id: a random UUID (or 128 random bits as hex where crypto is missing). */
function newPublishId(random) {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  let out = "";
  for (let i = 0; i < 32; i++) out += Math.floor(random() * 16).toString(16);
  return out;
}

/** The server's reply types to the built-in requests (besides `error`). */
const REPLY_TYPES = Object.freeze({
  join_room: ["room_joined"],
  leave_room: ["room_left"],
  history: ["history"],
  subscribe: ["subscribed"],
  unsubscribe: ["unsubscribed"],
  refresh: ["refreshed"],
  ping: ["pong"],
  kick: ["kicked"],
  presence: ["presence"],
  presence_stats: ["presence_stats"],
});

function subscriptionKey(table, filters) {
  const canon = (v) => {
    if (Array.isArray(v)) return v.map(canon);
    if (v !== null && typeof v === "object") {
      return Object.fromEntries(
        Object.keys(v)
          .sort()
          .map((k) => [k, canon(v[k])]),
      );
    }
    return v;
  };
  return `${table}:${JSON.stringify(canon(filters))}:${Math.random().toString(36).slice(2)}`;
}

/** A table subscription; `sid` is the server's id of the current connection (or null). */
export class Subscription {
  constructor(client, table, filters) {
    this.client = client;
    this.table = table;
    this.filters = filters;
    this.key = subscriptionKey(table, filters);
    this.sid = null;
    this.waiters = [];
    this._handlers = new Set();
  }

  /** Call `fn(event, message)` for each change; returns an unsubscribe-from-events function. */
  on(fn) {
    this._handlers.add(fn);
    return () => this._handlers.delete(fn);
  }

  _deliver(event, message) {
    for (const fn of [...this._handlers]) fn(event, message);
  }

  /** Stop the subscription (and its renewal after reconnects). */
  unsubscribe() {
    return this.client._unsubscribe(this);
  }
}

export { RECOVERY_EVENTS };
