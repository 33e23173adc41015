package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/firstseen/firstseen/engine"
)

// The processor's HTTP listener (--metrics-addr): Prometheus metrics
// (client_golang, the library Prometheus itself maintains), the probes a
// StatefulSet needs, and with --pprof the Go profiler. It exposes no
// configuration and no secret: the metrics are numbers about partitions,
// checkpoints and the runtime, and pprof's cmdline endpoint is left out.
//
//	/metrics       Prometheus exposition
//	/healthz       200 while the process is alive and its checkpoint loop
//	               moves (a write retried through a sink outage counts as
//	               moving); 503 once it has not moved for stallAfter
//	/readyz        200 once the partitions assigned so far are restored and
//	               a checkpoint has been taken since; 503 before
//	/debug/pprof/  with --pprof only

// listener configures serveStatus.
type listener struct {
	addr string
	// explicit: the address was given (flag, environment or file), so
	// failing to listen on it is an error; the default being busy (several
	// processes on one host) is a warning.
	explicit bool
	pprof    bool
	// stallAfter is how long the checkpoint loop may not move before
	// /healthz fails.
	stallAfter time.Duration
}

// defaultStallAfter is the /healthz threshold for a checkpoint interval:
// long enough for a slow checkpoint of a large epoch, short enough that a
// wedged process is restarted within minutes.
func defaultStallAfter(interval time.Duration) time.Duration { return 2*time.Minute + 2*interval }

// serveStatus starts the listener; the returned function stops it.
func serveStatus(l listener, st *engine.Status, obs *metricsObserver, log *slog.Logger) (func(), error) {
	if l.addr == "" || l.addr == "0" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", l.addr)
	if err != nil && !l.explicit {
		log.Warn("cannot serve metrics and health checks on the default address; set --metrics-addr", "addr", l.addr, "err", err)
		return func() {}, nil
	}
	if err != nil {
		return nil, usageError{fmt.Errorf("--metrics-addr %s: %v (use another address, or 0 to turn the listener off)", l.addr, err)}
	}
	srv := &http.Server{Handler: statusHandler(l, st, obs, time.Now()), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics listener stopped", "err", err)
		}
	}()
	log.Info("serving metrics and health checks", "addr", ln.Addr().String(), "pprof", l.pprof)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// statusHandler routes the listener's endpoints; started is when the
// process started (the loop counts as moving from then).
func statusHandler(l listener, st *engine.Status, obs *metricsObserver, started time.Time) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(newRegistry(st, obs), promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		// The coordinator marks itself alive at every tick of its loop
		// and every attempt of a retried write: silence means it is
		// wedged (a checkpoint stuck in a call that never returns). A
		// sink outage is not (restarting would not help).
		last := time.UnixMilli(st.Alive.Load())
		if last.Before(started) {
			last = started
		}
		if stale := time.Since(last); stale > l.stallAfter {
			http.Error(w, fmt.Sprintf("the checkpoint loop has not moved for %s", stale.Round(time.Second)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !st.Ready.Load() {
			http.Error(w, "restoring or before the first checkpoint", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if l.pprof {
		// Registered by hand: importing net/http/pprof for its side
		// effect would put the profiler on http.DefaultServeMux.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.Handle("/debug/pprof/cmdline", http.NotFoundHandler()) // the command line is configuration
	}
	return mux
}
