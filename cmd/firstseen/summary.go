package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/firstseen/firstseen/engine"
)

// totals are the process-wide sums of engine.Status at one moment.
type totals struct {
	at                                  time.Time
	records, written, isNew, late, dead int64
	held, lag                           int64
	checkpoints                         uint64
	minWatermark                        int64 // unix ms; 0: no partition has one
	partitions                          int
}

func readTotals(st *engine.Status, now time.Time) totals {
	t := totals{at: now, checkpoints: st.Checkpoints.Load()}
	st.EachPartition(func(ps *engine.PartitionStatus) {
		t.partitions++
		t.records += ps.Records.Load()
		t.written += ps.Written.Load()
		t.isNew += ps.New.Load()
		t.late += ps.Late.Load()
		t.dead += ps.DeadLettered.Load()
		t.held += ps.Held.Load()
		t.lag += ps.Lag()
		if wm := ps.Watermark.Load(); wm != 0 && (t.minWatermark == 0 || wm < t.minWatermark) {
			t.minWatermark = wm
		}
	})
	return t
}

// logSummaries logs one info line every period until ctx ends: the rates
// since the last line, the lag, held records and the slowest partition's
// watermark. It is the line to grep for in a log that has no metrics
// beside it.
func logSummaries(ctx context.Context, st *engine.Status, period time.Duration, log *slog.Logger) {
	tk := time.NewTicker(period)
	defer tk.Stop()
	prev := readTotals(st, time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tk.C:
			cur := readTotals(st, now)
			log.Info("summary", summaryAttrs(prev, cur, st)...)
			prev = cur
		}
	}
}

// summaryAttrs are the attributes of a summary line covering prev to cur.
func summaryAttrs(prev, cur totals, st *engine.Status) []any {
	secs := cur.at.Sub(prev.at).Seconds()
	rate := func(a, b int64) float64 {
		if secs <= 0 || b < a { // partitions left: their counts went with them
			return 0
		}
		return float64(int64((float64(b-a)/secs)*10)) / 10
	}
	attrs := []any{
		"partitions", cur.partitions,
		"records_per_sec", rate(prev.records, cur.records),
		"rows_written_per_sec", rate(prev.written, cur.written),
		"new_per_sec", rate(prev.isNew, cur.isNew),
		"late", max(cur.late-prev.late, 0),
		"dead_lettered", max(cur.dead-prev.dead, 0),
		"lag", cur.lag,
		"held", cur.held,
		"checkpoints", cur.checkpoints - min(prev.checkpoints, cur.checkpoints),
	}
	if cur.minWatermark != 0 {
		wm := time.UnixMilli(cur.minWatermark)
		attrs = append(attrs, "watermark", wm.UTC().Format(time.RFC3339), "watermark_delay", cur.at.Sub(wm).Round(time.Second))
	}
	if last := st.LastCheckpoint.Load(); last > 0 {
		attrs = append(attrs, "last_checkpoint_age", cur.at.Sub(time.UnixMilli(last)).Round(time.Millisecond))
	}
	if f := st.CheckpointFailures.Load(); f > 0 {
		attrs = append(attrs, "checkpoint_failures", f)
	}
	return attrs
}
