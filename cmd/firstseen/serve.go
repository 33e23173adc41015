package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/firstseen/firstseen/engine"
)

// The processor's HTTP listener (--metrics-addr): Prometheus metrics
// (client_golang, the library Prometheus itself maintains), and the probes a
// StatefulSet needs. It exposes no configuration and no secret.
//
//	/metrics  Prometheus exposition
//	/healthz  200 while the process is alive and its checkpoint loop moves
//	          (a write retried through a sink outage counts as moving)
//	/readyz   200 once the partitions assigned so far are restored and a
//	          checkpoint has been taken since

// serveStatus starts the listener; the returned function stops it.
// A busy default address is a warning (several processes on one host);
// an address given explicitly must work.
func serveStatus(addr string, explicit bool, st *engine.Status, interval time.Duration, log *slog.Logger) (func(), error) {
	if addr == "" || addr == "0" {
		return func() {}, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(), statusCollector{st})
	started := time.Now()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		// The coordinator marks itself alive at every tick of its loop
		// and every attempt of a retried write: silence means it is
		// wedged. A sink outage is not (restarting would not help).
		last := time.UnixMilli(st.Alive.Load())
		if last.Before(started) {
			last = started
		}
		if stale := time.Since(last); stale > 2*time.Minute+2*interval {
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
	ln, err := net.Listen("tcp", addr)
	if err != nil && !explicit {
		log.Warn("cannot serve metrics and health checks on the default address; set --metrics-addr", "addr", addr, "err", err)
		return func() {}, nil
	}
	if err != nil {
		return nil, usageError{fmt.Errorf("--metrics-addr %s: %v (use another address, or 0 to turn the listener off)", addr, err)}
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics listener stopped", "err", err)
		}
	}()
	log.Info("serving metrics and health checks", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// statusCollector reads engine.Status at each scrape.
type statusCollector struct{ st *engine.Status }

var (
	descPartitions = prometheus.NewDesc("firstseen_partitions", "Input partitions this process owns.", nil, nil)
	descRestoring  = prometheus.NewDesc("firstseen_restoring_partitions", "Partitions being restored from the changelog.", nil, nil)
	descRestored   = prometheus.NewDesc("firstseen_restored_users_total", "User records restored from the changelog.", nil, nil)
	descMisplaced  = prometheus.NewDesc("firstseen_misplaced_records_total",
		"Records that were not on the partition of their uuid (producers not keying by the canonical uuid): their is_new may be wrong; use --repartition.", nil, nil)
	descCheckpoints = prometheus.NewDesc("firstseen_checkpoints_total", "Checkpoints committed.", nil, nil)
	descLastCP      = prometheus.NewDesc("firstseen_last_checkpoint_timestamp_seconds", "When the last checkpoint was committed.", nil, nil)
	descReady       = prometheus.NewDesc("firstseen_ready", "1 once the assigned partitions are restored and checkpointed.", nil, nil)
)

func (c statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPartitions, descRestoring, descRestored, descMisplaced, descCheckpoints, descLastCP, descReady} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.st
	ready := 0.0
	if st.Ready.Load() {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descPartitions, prometheus.GaugeValue, float64(st.Partitions.Load()))
	ch <- prometheus.MustNewConstMetric(descRestoring, prometheus.GaugeValue, float64(st.Restoring.Load()))
	ch <- prometheus.MustNewConstMetric(descRestored, prometheus.CounterValue, float64(st.RestoredUsers.Load()))
	ch <- prometheus.MustNewConstMetric(descMisplaced, prometheus.CounterValue, float64(st.Misplaced.Load()))
	ch <- prometheus.MustNewConstMetric(descCheckpoints, prometheus.CounterValue, float64(st.Checkpoints.Load()))
	ch <- prometheus.MustNewConstMetric(descLastCP, prometheus.GaugeValue, float64(st.LastCheckpoint.Load())/1000)
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready)
}
