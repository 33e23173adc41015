package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
)

type scaleResult struct {
	UsersInState        int64   `json:"users_in_state"`
	BootstrapSeconds    float64 `json:"bootstrap_seconds"`
	PeakRSSMiB          float64 `json:"peak_rss_mib"`
	StateBytes          int64   `json:"state_bytes"`
	BytesPerUser        float64 `json:"bytes_per_user"`
	RestartReadySeconds float64 `json:"restart_ready_seconds"`        // process start to "starting" (state open, offsets known)
	RestartFirstOutput  float64 `json:"restart_first_output_seconds"` // process start to the first checkpoint with rows
	Check               check   `json:"check"`
}

// writeScaleUsers writes n users with random uuids, all first seen 30 days
// before the workload, as a CSV for `firstseen bootstrap`. The workload's
// users are random version-4 uuids too, so the two sets do not overlap and
// the oracle stands.
func writeScaleUsers(path string, n int, before time.Time, seed int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	w.WriteString("uuid,first_seen\n")
	rng := rand.New(rand.NewPCG(uint64(seed), 0x5ca1e))
	ms := strconv.AppendInt(nil, before.AddDate(0, 0, -30).UnixMilli(), 10)
	var u operators.UUID
	var line []byte
	for range n {
		for i := 0; i < 16; i += 8 {
			x := rng.Uint64()
			for j := range 8 {
				u[i+j] = byte(x >> (8 * j))
			}
		}
		u[6] = u[6]&0x0f | 0x40
		u[8] = u[8]&0x3f | 0x80
		line = u.AppendCanonical(line[:0])
		line = append(line, ',')
		line = append(line, ms...)
		line = append(line, '\n')
		w.Write(line)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// runScale bootstraps a state to --scale-users users, then processes the
// workload on it in two processes, each until caught up: the first half of
// the workload, then, restarted on the large state, the second half. It
// measures the peak RSS of both, the state on disk per user, and how soon
// the restarted process produced output.
func (b *bench) runScale(ctx context.Context, run int) (scaleResult, error) {
	var res scaleResult
	extra := b.o.scaleUsers - int(b.exp.users)
	if extra < 0 {
		extra = 0
	}
	if b.scaleCSV == "" && extra > 0 {
		b.scaleCSV = filepath.Join(b.work, "scale-users.csv")
		fmt.Fprintf(b.out, "  writing %d bootstrap users to %s\n", extra, b.scaleCSV)
		if err := writeScaleUsers(b.scaleCSV, extra, b.start, b.o.seed); err != nil {
			return res, err
		}
	}
	dir := filepath.Join(b.work, fmt.Sprintf("run%d-scale", run))
	// The workload goes to a topic of its own in two halves: the first
	// process takes the first half, the restarted one the second. The
	// bootstrap writes the extra users to the changelog of the processes'
	// group, which the first process restores.
	topic := fmt.Sprintf("scale-%d", run)
	if err := createTopic(ctx, b.brokers, topic, b.o.partitions); err != nil {
		return res, fmt.Errorf("create %s: %w", topic, err)
	}
	if extra > 0 {
		boot, err := startChild("firstseen bootstrap", dir+"-bootstrap.log", nil, b.o.firstseen,
			"bootstrap", "--brokers", b.brokers[0], "--topic", topic, "--group", filepath.Base(dir),
			"--input", b.scaleCSV, "--log-format", "json")
		if err != nil {
			return res, err
		}
		u, err := boot.wait(30 * time.Minute)
		if err != nil {
			return res, err
		}
		res.BootstrapSeconds = u.Wall.Seconds()
	}
	sink, err := b.openTable(ctx, "bench_scale")
	if err != nil {
		return res, err
	}
	defer sink.Close()
	half := len(b.recs) / 2
	if err := workload.Produce(ctx, b.brokers, topic, b.recs[:half]); err != nil {
		return res, err
	}
	args := append(b.runArgs(topic, "bench_scale", dir, b.o.checkpointInterval), "--until-caught-up")
	fs1, err := startChild("firstseen run (first half)", dir+"-1.log", nil, b.o.firstseen, args...)
	if err != nil {
		return res, err
	}
	u1, err := fs1.wait(30 * time.Minute)
	if err != nil {
		return res, err
	}
	if err := workload.Produce(ctx, b.brokers, topic, b.recs[half:]); err != nil {
		return res, err
	}
	second := newCommitLog()
	fs2, err := startChild("firstseen run (restart, second half)", dir+"-2.log", second.onLine, b.o.firstseen, args...)
	if err != nil {
		return res, err
	}
	u2, err := fs2.wait(30 * time.Minute)
	if err != nil {
		return res, err
	}
	if !second.starting.IsZero() {
		res.RestartReadySeconds = second.starting.Sub(fs2.started).Seconds()
	}
	if !second.firstRows.IsZero() {
		res.RestartFirstOutput = second.firstRows.Sub(fs2.started).Seconds()
	}
	res.PeakRSSMiB = float64(max(u1.MaxRSS, u2.MaxRSS)) / (1 << 20)
	res.UsersInState = b.exp.users + int64(extra)
	if res.StateBytes, err = dirBytes(dir); err != nil {
		return res, err
	}
	res.BytesPerUser = float64(res.StateBytes) / float64(res.UsersInState)
	res.Check, err = checkTable(ctx, sink, b.exp)
	return res, err
}
