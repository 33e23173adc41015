package main

import (
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/firstseen/firstseen/engine"
)

// The processor's Prometheus metrics. Counts and gauges are read from
// engine.Status at each scrape (statusCollector); durations and sizes are
// observed as they happen (metricsObserver, an engine.Observer). The list of
// names is deploy/monitoring/metrics.txt, which the dashboard and the alert
// rules are checked against.

// newRegistry returns a registry with the processor's metrics, the Go
// runtime's and the process's.
func newRegistry(st *engine.Status, obs *metricsObserver) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(), buildInfo(), statusCollector{st})
	if obs != nil {
		obs.register(reg)
	}
	return reg
}

// buildInfo is firstseen_build_info: 1, labelled with the version, VCS
// revision and Go version the binary was built from.
func buildInfo() prometheus.Collector {
	version, revision := "(devel)", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "firstseen_build_info",
		Help:        "A metric with a constant '1' value labeled by the version, revision and Go version firstseen was built from.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": runtime.Version()}})
	g.Set(1)
	return g
}

// metricsObserver turns the engine's checkpoint and sink-write events into
// histograms and counters.
type metricsObserver struct {
	cpDuration   prometheus.Histogram
	cpRows       prometheus.Histogram
	cpBytes      prometheus.Histogram
	sinkRows     *prometheus.HistogramVec
	sinkDuration *prometheus.HistogramVec
	sinkRetries  *prometheus.CounterVec
	sinkErrors   *prometheus.CounterVec
}

// newMetricsObserver returns the observer of a run writing to the named
// sinks; their series exist from the start, at zero.
func newMetricsObserver(sinkNames ...string) *metricsObserver {
	sl := []string{"sink"}
	o := &metricsObserver{
		cpDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "firstseen_checkpoint_duration_seconds",
			Help:    "Time a checkpoint took, from the barrier to the local commits (sink writes included).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}), // 5ms .. 41s
		cpRows: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "firstseen_checkpoint_rows",
			Help:    "Rows a checkpoint wrote to the sinks.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 11)}), // 1 .. 1M
		cpBytes: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "firstseen_checkpoint_changelog_bytes",
			Help:    "Bytes of state changes (keys and values) a checkpoint wrote to the changelog topic, with a Kafka sink's rows.",
			Buckets: prometheus.ExponentialBuckets(64, 4, 11)}), // 64 B .. 64 MiB
		sinkRows: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "firstseen_sink_batch_rows",
			Help:    "Rows in a batch written to a sink (once a batch, however many attempts it took).",
			Buckets: prometheus.ExponentialBuckets(1, 4, 11)}, sl),
		sinkDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "firstseen_sink_write_duration_seconds",
			Help:    "Time one attempt of a sink write took, failed ones included (a Kafka sink's: queueing in the checkpoint's transaction).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, sl), // 1ms .. 33s
		sinkRetries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "firstseen_sink_retries_total",
			Help: "Sink write attempts after the first of their batch."}, sl),
		sinkErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "firstseen_sink_errors_total",
			Help: "Sink write attempts that failed (transient ones are retried; a permanent one ends the run)."}, sl),
	}
	for _, name := range sinkNames {
		o.sinkRows.WithLabelValues(name)
		o.sinkDuration.WithLabelValues(name)
		o.sinkRetries.WithLabelValues(name)
		o.sinkErrors.WithLabelValues(name)
	}
	return o
}

func (o *metricsObserver) register(reg *prometheus.Registry) {
	reg.MustRegister(o.cpDuration, o.cpRows, o.cpBytes, o.sinkRows, o.sinkDuration, o.sinkRetries, o.sinkErrors)
}

// CheckpointTaken implements engine.Observer.
func (o *metricsObserver) CheckpointTaken(took time.Duration, rows, changelogBytes int) {
	o.cpDuration.Observe(took.Seconds())
	o.cpRows.Observe(float64(rows))
	o.cpBytes.Observe(float64(changelogBytes))
}

// SinkWrite implements engine.Observer.
func (o *metricsObserver) SinkWrite(sink string, rows int, took time.Duration, attempt int, err error) {
	o.sinkDuration.WithLabelValues(sink).Observe(took.Seconds())
	if attempt == 1 {
		o.sinkRows.WithLabelValues(sink).Observe(float64(rows))
	} else {
		o.sinkRetries.WithLabelValues(sink).Inc()
	}
	if err != nil {
		o.sinkErrors.WithLabelValues(sink).Inc()
	}
}

// statusCollector reads engine.Status at each scrape.
type statusCollector struct{ st *engine.Status }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descPartitions = desc("firstseen_partitions", "Input partitions this process owns.")
	descRestoring  = desc("firstseen_restoring_partitions", "Partitions being restored from the changelog.")
	descRemaining  = desc("firstseen_restore_remaining_records", "Changelog records the restores in progress have still to read.")
	descRestored   = desc("firstseen_restored_users_total", "User records restored from the changelog.")
	descMisplaced  = desc("firstseen_misplaced_records_total",
		"Records that were not on the partition of their uuid (producers not keying by the canonical uuid): their is_new may be wrong; use --repartition.")
	descCheckpoints = desc("firstseen_checkpoints_total", "Checkpoints committed.")
	descCPFailures  = desc("firstseen_checkpoint_failures_total", "Checkpoints that failed (the run ends, and the next start replays from the last one).")
	descLastCP      = desc("firstseen_last_checkpoint_timestamp_seconds", "When the last checkpoint was committed.")
	descReady       = desc("firstseen_ready", "1 once the assigned partitions are restored and checkpointed.")

	descRecords = desc("firstseen_input_records_total", "Input records read, valid and malformed.", "partition")
	descWritten = desc("firstseen_written_rows_total", "Rows committed to the sink by checkpoints.", "partition")
	descNew     = desc("firstseen_new_rows_total", "Rows decided is_new=1 (written at the next checkpoint).", "partition")
	descLate    = desc("firstseen_late_records_total", "Records that arrived later than the tolerance (written, flagged late).", "partition")
	descDead    = desc("firstseen_dead_letter_records_total", "Malformed records sent to the dead-letter topic.", "partition")
	descHeld    = desc("firstseen_held_records", "Records held back until the watermark passes a midnight.", "partition")
	descLag     = desc("firstseen_consumer_lag_records", "Records between the partition's position and its log end (last stable offset).", "partition")
	descOffset  = desc("firstseen_input_offset", "The next input offset to process.", "partition")
	descWM      = desc("firstseen_watermark_timestamp_seconds", "The partition's event-time watermark.", "partition")
	descWMDelay = desc("firstseen_watermark_delay_seconds", "How far the event-time watermark is behind the wall clock.", "partition")
	descState   = desc("firstseen_state_size_bytes", "Size of the partition's state database on disk, as of the last checkpoint.", "partition")
)

var statusDescs = []*prometheus.Desc{descPartitions, descRestoring, descRemaining, descRestored, descMisplaced, descCheckpoints,
	descCPFailures, descLastCP, descReady, descRecords, descWritten, descNew, descLate, descDead, descHeld, descLag, descOffset,
	descWM, descWMDelay, descState}

func (c statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range statusDescs {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.st
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	ready := 0.0
	if st.Ready.Load() {
		ready = 1
	}
	gauge(descPartitions, float64(st.Partitions.Load()))
	gauge(descRestoring, float64(st.Restoring.Load()))
	gauge(descRemaining, float64(st.RestoreRemaining.Load()))
	counter(descRestored, float64(st.RestoredUsers.Load()))
	counter(descMisplaced, float64(st.Misplaced.Load()))
	counter(descCheckpoints, float64(st.Checkpoints.Load()))
	counter(descCPFailures, float64(st.CheckpointFailures.Load()))
	if last := st.LastCheckpoint.Load(); last > 0 {
		gauge(descLastCP, float64(last)/1000)
	}
	gauge(descReady, ready)
	now := time.Now()
	st.EachPartition(func(ps *engine.PartitionStatus) {
		p := strconv.Itoa(int(ps.Partition))
		counter(descRecords, float64(ps.Records.Load()), p)
		counter(descWritten, float64(ps.Written.Load()), p)
		counter(descNew, float64(ps.New.Load()), p)
		counter(descLate, float64(ps.Late.Load()), p)
		counter(descDead, float64(ps.DeadLettered.Load()), p)
		gauge(descHeld, float64(ps.Held.Load()), p)
		gauge(descLag, float64(ps.Lag()), p)
		gauge(descOffset, float64(ps.NextOffset.Load()), p)
		gauge(descState, float64(ps.StateBytes.Load()), p)
		if wm := ps.Watermark.Load(); wm != 0 {
			gauge(descWM, float64(wm)/1000, p)
			gauge(descWMDelay, now.Sub(time.UnixMilli(wm)).Seconds(), p)
		}
	})
}

var _ engine.Observer = (*metricsObserver)(nil)
