// Benchmark peer of trio_rt: a broadcast server on gorilla/websocket (the version pinned in
// go.mod / go.sum) with one writer goroutine per connection, speaking the subset of the demo's
// protocol that the harnesses use (benchmarks/README.md, "Peers"):
//
//   - on connect: {"type":"welcome","connection_id":"<n>"};
//   - {"type":"join_room","room":R} -> joins R, replies {"type":"room_joined","room":R};
//   - {"type":"bench_start","count":M,"size":S[,"rate":R]} -> M broadcasts to the room "bench"
//     of {"type":"bench","seq":i,"t":<CLOCK_MONOTONIC ns>,"pad":"x"*S}: each message is
//     encoded once (a websocket.PreparedMessage, framed once) and queued to every member's
//     writer goroutine. With R > 0 broadcast i is sent at start + i/R (absolute schedule);
//   - --heartbeat S: each writer pings every S seconds; a connection that sends nothing (no
//     pong either) for 2*S is closed (gorilla's chat example: read deadline + pong handler);
//   - --compression: permessage-deflate (gorilla's EnableCompression) with clients offering it;
//   - SIGUSR1: runtime.GC() and a line "STATE <open> <heartbeat timeouts> <opened> <closed>"
//     (benchmarks.connections);
//   - prints "READY <port>" once listening (--port 0: any free port).
//
// Each connection's queue is a bounded channel (sendQueue messages). Overflow policy:
// backpressure - the broadcaster waits for room in the queue. (gorilla's chat example drops the
// client instead; with bursts of thousands of broadcasts that would drop every client.)
//
// Built by `python -m benchmarks.servers.go_gorilla` into a cache directory with the Go module
// proxy (benchmarks/peers/__init__.py).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"
)

const (
	room      = "bench"
	sendQueue = 256
)

// CLOCK_MONOTONIC (Python's time.monotonic_ns, the load generator's clock) read once at start;
// later readings add Go's own monotonic time elapsed since then (the same clock, no syscall).
var monoBase, wallBase = func() (int64, time.Time) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		log.Fatal(err)
	}
	return ts.Nano(), time.Now()
}()

func monotonicNs() int64 { return monoBase + int64(time.Since(wallBase)) }

type client struct {
	conn  *websocket.Conn
	send  chan *websocket.PreparedMessage
	done  chan struct{} // closed when the connection's handler returns
	rooms []string
}

// queue hands pm to the writer, waiting while the queue is full (backpressure); drops it once
// the connection is gone.
func (c *client) queue(pm *websocket.PreparedMessage) {
	select {
	case c.send <- pm:
	case <-c.done:
	}
}

type hub struct {
	mu    sync.Mutex
	rooms map[string]map[*client]struct{}

	nextID, open, opened, closed, timeouts atomic.Int64
}

func (h *hub) join(c *client, name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	members := h.rooms[name]
	if members == nil {
		members = make(map[*client]struct{})
		h.rooms[name] = members
	}
	members[c] = struct{}{}
	c.rooms = append(c.rooms, name)
}

func (h *hub) leave(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, name := range c.rooms {
		delete(h.rooms[name], c)
	}
}

func (h *hub) members(name string) []*client {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*client, 0, len(h.rooms[name]))
	for c := range h.rooms[name] {
		out = append(out, c)
	}
	return out
}

func prepared(v any) *websocket.PreparedMessage {
	data, err := json.Marshal(v)
	if err != nil {
		log.Fatal(err)
	}
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, data)
	if err != nil {
		log.Fatal(err)
	}
	return pm
}

type benchMessage struct {
	Type string `json:"type"`
	Seq  int    `json:"seq"`
	T    int64  `json:"t"`
	Pad  string `json:"pad"`
}

func (h *hub) runBench(count, size int, rate float64) {
	pad := strings.Repeat("x", size)
	members := h.members(room)
	start := time.Now()
	for i := 0; i < count; i++ {
		if rate > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))))
		}
		pm := prepared(benchMessage{Type: "bench", Seq: i, T: monotonicNs(), Pad: pad})
		for _, c := range members {
			c.queue(pm)
		}
	}
}

// writer is the connection's only writer: queued messages and heartbeat pings.
func (c *client) writer(heartbeat time.Duration) {
	var tick <-chan time.Time
	if heartbeat > 0 {
		ticker := time.NewTicker(heartbeat)
		defer ticker.Stop()
		tick = ticker.C
	}
	for {
		select {
		case pm := <-c.send:
			if err := c.conn.WritePreparedMessage(pm); err != nil {
				c.conn.Close()
				return
			}
		case <-tick:
			deadline := time.Now().Add(heartbeat)
			if err := c.conn.WriteControl(websocket.PingMessage, nil, deadline); err != nil {
				c.conn.Close()
				return
			}
		case <-c.done:
			return
		}
	}
}

type incoming struct {
	Type  string  `json:"type"`
	Room  string  `json:"room"`
	Count int     `json:"count"`
	Size  int     `json:"size"`
	Rate  float64 `json:"rate"`
}

func (h *hub) serve(upgrader *websocket.Upgrader, heartbeat time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade has answered with an HTTP error
		}
		h.open.Add(1)
		h.opened.Add(1)
		c := &client{
			conn: conn,
			send: make(chan *websocket.PreparedMessage, sendQueue),
			done: make(chan struct{}),
		}
		defer func() {
			h.leave(c)
			close(c.done)
			conn.Close()
			h.open.Add(-1)
			h.closed.Add(1)
		}()
		go c.writer(heartbeat)
		id := strconv.FormatInt(h.nextID.Add(1), 10)
		c.queue(prepared(map[string]string{"type": "welcome", "connection_id": id}))
		if heartbeat > 0 {
			conn.SetReadDeadline(time.Now().Add(2 * heartbeat))
			conn.SetPongHandler(func(string) error {
				return conn.SetReadDeadline(time.Now().Add(2 * heartbeat))
			})
		}
		for {
			kind, data, err := conn.ReadMessage()
			if err != nil {
				var netErr net.Error
				if errors.As(err, &netErr) && netErr.Timeout() {
					h.timeouts.Add(1) // no pong (nor anything else) within 2 heartbeats
				}
				return
			}
			if heartbeat > 0 {
				conn.SetReadDeadline(time.Now().Add(2 * heartbeat))
			}
			if kind != websocket.TextMessage {
				continue
			}
			var msg incoming
			if json.Unmarshal(data, &msg) != nil {
				continue
			}
			switch msg.Type {
			case "join_room":
				h.join(c, msg.Room)
				c.queue(prepared(map[string]string{"type": "room_joined", "room": msg.Room}))
			case "bench_start":
				go h.runBench(msg.Count, msg.Size, msg.Rate)
			}
		}
	}
}

func main() {
	host := flag.String("host", "127.0.0.1", "listen address")
	port := flag.Int("port", 0, "port (0: any free one)")
	heartbeatS := flag.Float64("heartbeat", 0, "ping interval in seconds (0: off)")
	compression := flag.Bool("compression", false, "permessage-deflate")
	flag.Parse()
	heartbeat := time.Duration(*heartbeatS * float64(time.Second))

	h := &hub{rooms: make(map[string]map[*client]struct{})}
	upgrader := &websocket.Upgrader{
		CheckOrigin:       func(*http.Request) bool { return true },
		EnableCompression: *compression,
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGUSR1)
	go func() {
		for range signals {
			runtime.GC()
			fmt.Printf("STATE %d %d %d %d\n", h.open.Load(), h.timeouts.Load(), h.opened.Load(), h.closed.Load())
		}
	}()

	listener, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("READY %d\n", listener.Addr().(*net.TCPAddr).Port)
	log.Fatal(http.Serve(listener, h.serve(upgrader, heartbeat)))
}
