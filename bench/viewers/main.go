// Command viewers is the viewer fleet of the benchmarks (bench/fleet.py): it registers N viewers
// with the registration API (POST /register {"client_id": ...}), connects each to the
// subscriber_endpoint it was given, and notes, per viewer and window, the last update received
// (its arrival time and total count). Loopback only: connections are spread over the local
// source addresses given (127.0.0.2, 127.0.0.3, ...), as many viewers behind a proxy would come
// from several addresses, so the per-address limits (REGISTRATION_BURST_PER_ADDRESS,
// WS_MAX_CONNECTIONS_PER_ADDRESS) need not be raised.
//
// Protocol: once every viewer is connected (or gave up), one JSON line {"event": "connected",
// ...} goes to stdout. The fleet then listens until a line arrives on stdin (or stdin closes, or
// -max-seconds pass), closes its connections and writes one JSON line {"event": "result", ...}:
// per window start, a histogram of (total count of the last update, window end -> arrival of
// that update in ms) over viewers, plus the process's CPU seconds (getrusage).
//
// Python is the project's language; this is a load generator only, compiled so that it is not
// the bottleneck of the benchmark it drives.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type registration struct {
	Status   string `json:"status"`
	Cluster  string `json:"cluster_id"`
	Endpoint string `json:"subscriber_endpoint"`
	StreamID string `json:"stream_id"`
}

type update struct {
	StreamID    string `json:"stream_id"`
	WindowStart string `json:"window_start"`
	WindowEnd   string `json:"window_end"`
	Aggregates  []struct {
		Count int64 `json:"count"`
	} `json:"aggregates"`
}

// last is a viewer's last update of one window.
type last struct {
	total   int64
	arrival time.Time
	end     time.Time
	updates int32
}

type viewer struct {
	mu      sync.Mutex
	windows map[string]*last
}

type config struct {
	registrationURL string
	prefix          string
	first, count    int
	addresses       []net.IP
	concurrency     int
	maxSeconds      float64
	attempts        int
	timeout         time.Duration
	compression     bool
}

func main() {
	cfg := config{}
	var addresses string
	flag.StringVar(&cfg.registrationURL, "registration", "http://127.0.0.1:5001", "the registration API's base URL")
	flag.StringVar(&cfg.prefix, "prefix", "fleet-viewer-", "client ids are PREFIX + number")
	flag.IntVar(&cfg.first, "first", 0, "number of the first viewer")
	flag.IntVar(&cfg.count, "count", 1000, "viewers to register and connect")
	flag.StringVar(&addresses, "addresses", "127.0.0.2", "comma-separated local source addresses, or FIRST+N (127.0.0.2+8)")
	flag.IntVar(&cfg.concurrency, "concurrency", 256, "registrations and handshakes under way at once")
	flag.Float64Var(&cfg.maxSeconds, "max-seconds", 900, "stop on its own after this long")
	flag.IntVar(&cfg.attempts, "attempts", 30, "tries per registration and connection (429/503 wait Retry-After)")
	flag.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "timeout of one request or handshake")
	flag.BoolVar(&cfg.compression, "compression", false, "offer permessage-deflate, as browsers do")
	flag.Parse()
	ips, err := parseAddresses(addresses)
	if err != nil || cfg.count < 0 || cfg.concurrency < 1 {
		fmt.Fprintf(os.Stderr, "viewers: bad arguments: %v\n", err)
		os.Exit(2)
	}
	cfg.addresses = ips
	os.Exit(run(cfg))
}

func parseAddresses(text string) ([]net.IP, error) {
	if base, n, ok := strings.Cut(text, "+"); ok {
		ip := net.ParseIP(base).To4()
		count, err := strconv.Atoi(n)
		if ip == nil || err != nil || count < 1 {
			return nil, fmt.Errorf("-addresses %q: want A.B.C.D+N", text)
		}
		var out []net.IP
		for i := 0; i < count; i++ {
			next := make(net.IP, 4)
			v := uint32(ip[0])<<24 | uint32(ip[1])<<16 | uint32(ip[2])<<8 | uint32(ip[3])
			v += uint32(i)
			next[0], next[1], next[2], next[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
			out = append(out, next)
		}
		return out, nil
	}
	var out []net.IP
	for _, part := range strings.Split(text, ",") {
		ip := net.ParseIP(strings.TrimSpace(part)).To4()
		if ip == nil {
			return nil, fmt.Errorf("-addresses: %q is not an IPv4 address", part)
		}
		out = append(out, ip)
	}
	return out, nil
}

// dialFrom dials over IPv4 from a local address (the servers listen on loopback; "localhost"
// may resolve to ::1 first).
func dialFrom(ip net.IP, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: timeout}
	return func(ctx context.Context, _ string, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp4", addr)
	}
}

type counters struct {
	registered, connected, failedRegistration, failedConnection, retries429, retries503, closedEarly atomic.Int64
	updates, invalid                                                                                 atomic.Int64
	errors                                                                                           sync.Map
}

func (c *counters) noteError(kind string) {
	v, _ := c.errors.LoadOrStore(kind, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func run(cfg config) int {
	started := time.Now()
	deadline := started.Add(time.Duration(cfg.maxSeconds * float64(time.Second)))
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	clients := make([]*http.Client, len(cfg.addresses))
	dialers := make([]*websocket.Dialer, len(cfg.addresses))
	for i, ip := range cfg.addresses {
		clients[i] = &http.Client{Timeout: cfg.timeout, Transport: &http.Transport{
			DialContext: dialFrom(ip, cfg.timeout), MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64,
			DisableCompression: true}}
		dialers[i] = &websocket.Dialer{NetDialContext: dialFrom(ip, cfg.timeout),
			HandshakeTimeout: cfg.timeout, ReadBufferSize: 2048, WriteBufferSize: 512,
			EnableCompression: cfg.compression}
	}

	var c counters
	viewers := make([]*viewer, cfg.count)
	conns := make([]*websocket.Conn, cfg.count)
	var readers sync.WaitGroup
	gate := make(chan struct{}, cfg.concurrency)
	var joining sync.WaitGroup
	registerStart := time.Now()
	var registeredAt, connectedAt atomic.Int64 // unix ns of the last success
	for i := 0; i < cfg.count; i++ {
		joining.Add(1)
		gate <- struct{}{}
		go func(i int) {
			defer joining.Done()
			defer func() { <-gate }()
			slot := i % len(cfg.addresses)
			id := cfg.prefix + strconv.Itoa(cfg.first+i)
			reg, err := register(ctx, clients[slot], cfg, id, &c)
			if err != nil {
				c.failedRegistration.Add(1)
				c.noteError("register: " + err.Error())
				return
			}
			c.registered.Add(1)
			registeredAt.Store(time.Now().UnixNano())
			conn, err := connect(ctx, dialers[slot], cfg, reg.Endpoint, &c)
			if err != nil {
				c.failedConnection.Add(1)
				c.noteError("connect: " + err.Error())
				return
			}
			c.connected.Add(1)
			connectedAt.Store(time.Now().UnixNano())
			v := &viewer{windows: make(map[string]*last, 64)}
			viewers[i], conns[i] = v, conn
			readers.Add(1)
			go func() {
				defer readers.Done()
				receive(conn, v, &c)
			}()
		}(i)
	}
	joining.Wait()
	joinSeconds := time.Since(registerStart).Seconds()
	emit(map[string]any{"event": "connected", "connected": c.connected.Load(),
		"registered": c.registered.Load(), "failed_registrations": c.failedRegistration.Load(),
		"failed_connections": c.failedConnection.Load(), "join_seconds": joinSeconds,
		"retries_429": c.retries429.Load(), "retries_503": c.retries503.Load(),
		"errors": errorCounts(&c)})

	// Listen until told to stop (a line or EOF on stdin) or the deadline.
	stop := make(chan struct{})
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		close(stop)
	}()
	select {
	case <-stop:
	case <-ctx.Done():
	}
	stoppedAt := time.Now()
	for _, conn := range conns {
		if conn != nil {
			_ = conn.SetReadDeadline(time.Now()) // readers return; the servers see the close
		}
	}
	readers.Wait()
	for _, conn := range conns {
		if conn != nil {
			_ = conn.Close()
		}
	}
	windows := map[string]map[string]int{} // window start -> "total latency_ms" -> viewers
	ends := map[string]string{}
	updatesPerWindow := map[string]int64{}
	for _, v := range viewers {
		if v == nil {
			continue
		}
		v.mu.Lock()
		for start, l := range v.windows {
			h := windows[start]
			if h == nil {
				h = map[string]int{}
				windows[start] = h
				ends[start] = l.end.UTC().Format(time.RFC3339Nano)
			}
			ms := int64(math.Round(float64(l.arrival.Sub(l.end).Microseconds()) / 1000))
			h[strconv.FormatInt(l.total, 10)+" "+strconv.FormatInt(ms, 10)]++
			updatesPerWindow[start] += int64(l.updates)
		}
		v.mu.Unlock()
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := tv(ru.Utime) + tv(ru.Stime)
	emit(map[string]any{"event": "result", "viewers": cfg.count, "connected": c.connected.Load(),
		"closed_early": c.closedEarly.Load(), "updates": c.updates.Load(),
		"invalid_updates": c.invalid.Load(), "windows": windows, "window_ends": ends,
		"updates_per_window": updatesPerWindow, "cpu_seconds": cpu,
		"user_seconds": tv(ru.Utime), "system_seconds": tv(ru.Stime),
		"max_rss_kib": ru.Maxrss, "elapsed_seconds": stoppedAt.Sub(started).Seconds(),
		"join_seconds": joinSeconds, "last_registration_at": float64(registeredAt.Load()) / 1e9,
		"last_connection_at": float64(connectedAt.Load()) / 1e9, "errors": errorCounts(&c)})
	return 0
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func emit(v any) {
	line, _ := json.Marshal(v)
	os.Stdout.Write(append(line, '\n'))
}

func errorCounts(c *counters) map[string]int64 {
	out := map[string]int64{}
	c.errors.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// retryAfter is the Retry-After of an answer in seconds (1 when absent).
func retryAfter(h http.Header) time.Duration {
	if s, err := strconv.Atoi(h.Get("Retry-After")); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return time.Second
}

func register(ctx context.Context, client *http.Client, cfg config, id string, c *counters) (*registration, error) {
	body := []byte(`{"client_id":"` + id + `"}`)
	var lastErr error
	for attempt := 0; attempt < cfg.attempts; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.registrationURL+"/register", strings.NewReader(string(body)))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			lastErr = errors.New("request failed")
			if ctx.Err() != nil {
				return nil, lastErr
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			var reg registration
			if err := json.Unmarshal(data, &reg); err != nil || reg.Endpoint == "" {
				return nil, errors.New("answer without subscriber_endpoint")
			}
			return &reg, nil
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			if resp.StatusCode == http.StatusTooManyRequests {
				c.retries429.Add(1)
			} else {
				c.retries503.Add(1)
			}
			lastErr = fmt.Errorf("HTTP %d", resp.StatusCode)
			time.Sleep(retryAfter(resp.Header))
		default:
			return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
		}
	}
	return nil, lastErr
}

func connect(ctx context.Context, dialer *websocket.Dialer, cfg config, endpoint string, c *counters) (*websocket.Conn, error) {
	var lastErr error
	for attempt := 0; attempt < cfg.attempts; attempt++ {
		conn, resp, err := dialer.DialContext(ctx, endpoint, nil)
		if err == nil {
			return conn, nil
		}
		if resp != nil && resp.StatusCode == http.StatusTooManyRequests {
			c.retries429.Add(1)
			lastErr = errors.New("HTTP 429")
			time.Sleep(retryAfter(resp.Header))
			continue
		}
		if resp != nil {
			return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		lastErr = errors.New("handshake failed")
		if ctx.Err() != nil {
			return nil, lastErr
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil, lastErr
}

// receive notes every update until the connection ends; an update's window end is parsed once
// per window and viewer.
func receive(conn *websocket.Conn, v *viewer, c *counters) {
	for {
		_, data, err := conn.ReadMessage()
		arrival := time.Now()
		if err != nil {
			var closeErr *websocket.CloseError
			if errors.As(err, &closeErr) {
				c.closedEarly.Add(1)
				c.noteError(fmt.Sprintf("closed by the server: %d", closeErr.Code))
			}
			return
		}
		var u update
		if err := json.Unmarshal(data, &u); err != nil || u.WindowStart == "" {
			c.invalid.Add(1)
			continue
		}
		c.updates.Add(1)
		var total int64
		for _, a := range u.Aggregates {
			total += a.Count
		}
		v.mu.Lock()
		l := v.windows[u.WindowStart]
		if l == nil {
			end, err := time.Parse(time.RFC3339Nano, u.WindowEnd)
			if err != nil {
				v.mu.Unlock()
				c.invalid.Add(1)
				continue
			}
			l = &last{end: end}
			v.windows[u.WindowStart] = l
		}
		l.total, l.arrival = total, arrival
		l.updates++
		v.mu.Unlock()
	}
}
