// Go's net/http server as a command worker: it serves the inherited listener (fd 3, `net.FileListener`), says
// READY=1 on $NOTIFY_SOCKET once it serves, and on SIGTERM stops accepting and finishes its connections
// (`http.Server.Shutdown`: idle keep-alive connections are closed, requests in flight are answered).
// Without the handler Go's default SIGTERM ends the process at once and cuts requests in flight. Run:
//
//	go build -o /tmp/go-server examples/go/server.go
//	port-sharding serve --host 127.0.0.1 --port 3000 -w 2 --ready notify -- /tmp/go-server
//
// SLOW_EVERY=N SLOW_MS=M: every Nth request of the process sleeps M ms first (the benchmarks' mixed load).
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// inherited returns the listener the supervisor (or systemd) passed as fd 3, refusing to run without one:
// LISTEN_FDS says how many were passed, LISTEN_PID that they are meant for this process.
func inherited() (net.Listener, error) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") == "" {
		return nil, fmt.Errorf("no listener passed (LISTEN_FDS, LISTEN_PID): run it under `port-sharding serve`")
	}
	f := os.NewFile(3, "listener")
	defer f.Close() // FileListener has its own duplicate of fd 3
	return net.FileListener(f)
}

// notify sends one sd_notify line ("READY=1", "STOPPING=1") when a manager listens ($NOTIFY_SOCKET).
func notify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		log.Printf("notify %s: %v", state, err)
		return
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		log.Printf("notify %s: %v", state, err)
	}
}

func main() {
	ln, err := inherited()
	if err != nil {
		log.Fatal(err)
	}
	slowEvery, _ := strconv.ParseInt(os.Getenv("SLOW_EVERY"), 10, 64)
	slowMs, err := strconv.Atoi(os.Getenv("SLOW_MS"))
	if err != nil {
		slowMs = 200
	}
	var count atomic.Int64
	body := fmt.Sprintf("Hello from go process %d\n", os.Getpid())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n := count.Add(1); slowEvery > 0 && n%slowEvery == 0 {
			time.Sleep(time.Duration(slowMs) * time.Millisecond)
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write([]byte(body))
	})}

	stopped := make(chan struct{})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		notify("STOPPING=1")
		// Within the supervisor's drain timeout, which ends it with SIGKILL anyway.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			log.Printf("shutdown: %v", err)
		}
		close(stopped)
	}()

	// Connections that arrive before Serve's first accept wait in the listener's queue: ready now.
	notify("READY=1")
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-stopped
}
