package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/engine/enginetest"
	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
)

// TestMetricsDuringRun runs a real processor (a child process, an
// in-process Kafka broker) and reads its listener as Prometheus, a
// Kubernetes probe and an on-call engineer would: /readyz is 503 until the
// first checkpoint, the key series move when records arrive and end equal
// to what the oracle says of the input, every metric the dashboard and the
// alerts may name is served, `firstseen status` shows the partitions, and
// the logs carry per-checkpoint and summary lines.
func TestMetricsDuringRun(t *testing.T) {
	const parts = 3
	broker := enginetest.StartBroker(t, "logs", parts)
	recs, err := workload.Generate(workload.Config{Users: 3000, Days: 2, Partitions: parts, Seed: 71,
		Start: time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC), LateShare: 0.01, MalformedShare: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	want := workload.Oracle(recs, operators.Config{Tolerance: 10 * time.Minute}, nil)
	half := len(recs) / 2
	enginetest.Produce(t, broker.ListenAddrs(), "logs", recs[:half])

	dir := t.TempDir()
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	run := start(t, "run", nil, "run", "--brokers", broker.ListenAddrs()[0], "--topic", "logs",
		"--state-dir", filepath.Join(dir, "state"), "--sink", "file", "--sink-path", filepath.Join(dir, "rows"),
		"--metrics-addr", fmt.Sprintf("127.0.0.1:%d", port), "--checkpoint-interval", "1500ms",
		"--summary-interval", "1s", "--log-level", "debug", "--log-format", "json")

	// The listener is up before the first checkpoint: not ready, but alive.
	var first int
	for deadline := time.Now().Add(30 * time.Second); first == 0; {
		if code, _ := get(base + "/readyz"); code != 0 {
			first = code
		} else if time.Now().After(deadline) || run.exited() {
			t.Fatalf("the listener never answered:\n%s", tail(run.out.String(), 3000))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if first != http.StatusServiceUnavailable {
		t.Errorf("/readyz answered %d before the first checkpoint, want 503", first)
	}
	if code, body := get(base + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %q while running", code, body)
	}
	waitFor(t, run, "/readyz to answer 200", func() bool { code, _ := get(base + "/readyz"); return code == http.StatusOK })

	validIn := func(n int) (valid int) {
		for _, e := range want[:n] {
			if e.Reason == operators.OK {
				valid++
			}
		}
		return valid
	}
	// Every record read, and every row either written or held.
	settled := func(n int) func() bool {
		return func() bool {
			m := scrapeMetrics(t, base)
			return m.value("firstseen_input_records_total") == float64(n) && m.value("firstseen_consumer_lag_records") == 0 &&
				m.value("firstseen_written_rows_total")+m.value("firstseen_held_records") == float64(validIn(n))
		}
	}
	waitFor(t, run, "the first half to be checkpointed", settled(half))
	before := scrapeMetrics(t, base)

	enginetest.Produce(t, broker.ListenAddrs(), "logs", recs[half:])
	waitFor(t, run, "the second half to be checkpointed", settled(len(recs)))
	after := scrapeMetrics(t, base)

	for _, name := range []string{"firstseen_input_records_total", "firstseen_written_rows_total", "firstseen_new_rows_total",
		"firstseen_dead_letter_records_total", "firstseen_checkpoints_total", "firstseen_input_offset",
		"firstseen_watermark_timestamp_seconds"} {
		if after.value(name) <= before.value(name) {
			t.Errorf("%s did not move while the second half was processed: %v, then %v", name, before.value(name), after.value(name))
		}
	}
	// The histograms: how many were observed (durations), or their sums
	// (sizes).
	for _, name := range []string{"firstseen_checkpoint_duration_seconds", "firstseen_sink_write_duration_seconds"} {
		if _, n := after.histogram(name); n <= countOf(before.histogram(name)) {
			t.Errorf("%s observed nothing while the second half was processed", name)
		}
	}
	for _, name := range []string{"firstseen_checkpoint_rows", "firstseen_checkpoint_changelog_bytes", "firstseen_sink_batch_rows"} {
		if sum, _ := after.histogram(name); sum <= sumOf(before.histogram(name)) {
			t.Errorf("%s's sum did not grow while the second half was processed", name)
		}
	}
	// The per-partition counts are those of the input.
	for p := range int32(parts) {
		var records, dead, valid, late int
		for i, e := range want {
			if recs[i].Partition != p {
				continue
			}
			records++
			switch {
			case e.Reason != operators.OK:
				dead++
			case e.Late:
				valid++
				late++
			default:
				valid++
			}
		}
		l := strconv.Itoa(int(p))
		at := func(name string) float64 { return after.value(name, "partition", l) }
		checks := []struct {
			name string
			want float64
		}{
			{"firstseen_input_records_total", float64(records)},
			{"firstseen_dead_letter_records_total", float64(dead)},
			{"firstseen_late_records_total", float64(late)},
			{"firstseen_input_offset", float64(records)},
			{"firstseen_consumer_lag_records", 0},
		}
		for _, c := range checks {
			if got := at(c.name); got != c.want {
				t.Errorf("%s{partition=%s} = %v, want %v", c.name, l, got, c.want)
			}
		}
		if got := at("firstseen_written_rows_total") + at("firstseen_held_records"); got != float64(valid) {
			t.Errorf("partition %d: written + held = %v, want the %d valid records", p, got, valid)
		}
		if at("firstseen_state_size_bytes") <= 0 {
			t.Errorf("partition %d: no state size", p)
		}
		wm, delay := at("firstseen_watermark_timestamp_seconds"), at("firstseen_watermark_delay_seconds")
		if wm < float64(time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC).Unix()) || delay <= 0 {
			t.Errorf("partition %d: watermark %v, delay %v", p, wm, delay)
		}
	}
	if after.value("firstseen_ready") != 1 || after.value("firstseen_partitions") != parts || after.value("firstseen_checkpoint_failures_total") != 0 {
		t.Errorf("ready %v, partitions %v, checkpoint failures %v", after.value("firstseen_ready"), after.value("firstseen_partitions"),
			after.value("firstseen_checkpoint_failures_total"))
	}
	// Every metric the dashboard and alerts may name is served.
	names, err := os.ReadFile("../../deploy/monitoring/metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(names), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		name, typ, labels := fields[0], fields[1], fields[2:]
		fam := after.families[name]
		if got := strings.ToLower(fam.GetType().String()); fam == nil || got != typ {
			t.Errorf("deploy/monitoring/metrics.txt lists %s %s; a running processor serves it as %q", name, typ, got)
			continue
		}
		for _, l := range labels {
			if !hasLabel(fam, l) {
				t.Errorf("deploy/monitoring/metrics.txt gives %s the label %s, which it does not have", name, l)
			}
		}
	}
	// The profiler is off without --pprof.
	if code, _ := get(base + "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ = %d without --pprof, want 404", code)
	}

	out, err := execute(t, "status", "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", port), "--once", "--interval", "200ms")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, s := range []string{"ready, 3 partitions", "checkpoints", "PARTITION", "OFFSET", "LAG", "WATERMARK"} {
		if !strings.Contains(out, s) {
			t.Errorf("status does not show %q:\n%s", s, out)
		}
	}
	for p := range parts {
		if !regexp.MustCompile(fmt.Sprintf(`(?m)^ *%d +%d +0 `, p, int64(after.value("firstseen_input_offset", "partition", strconv.Itoa(p))))).MatchString(out) {
			t.Errorf("status has no line for partition %d:\n%s", p, out)
		}
	}

	run.cmd.Process.Signal(syscall.SIGTERM)
	<-run.done
	if run.err != nil {
		t.Fatalf("run exited with %v", run.err)
	}
	// The logs are JSON, with a debug line per checkpoint and info
	// summaries carrying the rates, lag and watermark.
	var checkpoints, summaries int
	sc := bufio.NewScanner(strings.NewReader(run.out.String()))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("not a JSON log line: %q", sc.Text())
		}
		switch line["msg"] {
		case "checkpoint":
			checkpoints++
			if line["level"] != "DEBUG" || line["took"] == nil {
				t.Errorf("checkpoint line: %v", line)
			}
		case "summary":
			summaries++
			for _, k := range []string{"records_per_sec", "rows_written_per_sec", "lag", "watermark", "held"} {
				if _, ok := line[k]; !ok && summaries > 1 {
					t.Errorf("summary line without %s: %v", k, line)
				}
			}
		}
	}
	if checkpoints == 0 || summaries == 0 {
		t.Errorf("%d checkpoint lines, %d summary lines in the log", checkpoints, summaries)
	}
}

// TestStatusUnreachable: status --once on an address nobody listens on
// says so and fails.
func TestStatusUnreachable(t *testing.T) {
	out, err := execute(t, "status", "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--once", "--interval", "100ms")
	if err == nil || !strings.Contains(err.Error(), "cannot reach the processor's metrics") {
		t.Fatalf("status of nothing: %v\n%s", err, out)
	}
}

// TestHealthEndpoints: /healthz fails once the checkpoint loop has not
// moved for stallAfter, and recovers when it moves; /readyz follows Ready;
// pprof is served only when asked for, without the command line.
func TestHealthEndpoints(t *testing.T) {
	st := &engine.Status{}
	started := time.Now().Add(-time.Hour)
	for _, pprofOn := range []bool{false, true} {
		h := statusHandler(listener{pprof: pprofOn, stallAfter: time.Minute}, st, newMetricsObserver("file"), started)
		code := func(path string) int {
			rec := &responseRecorder{header: http.Header{}}
			h.ServeHTTP(rec, mustRequest(t, path))
			return rec.code
		}
		st.Alive.Store(time.Now().Add(-2 * time.Minute).UnixMilli())
		if c := code("/healthz"); c != http.StatusServiceUnavailable {
			t.Errorf("/healthz = %d with the loop stalled for 2m (stallAfter 1m)", c)
		}
		st.Alive.Store(time.Now().UnixMilli())
		if c := code("/healthz"); c != http.StatusOK {
			t.Errorf("/healthz = %d with the loop moving", c)
		}
		st.Ready.Store(false)
		if c := code("/readyz"); c != http.StatusServiceUnavailable {
			t.Errorf("/readyz = %d before ready", c)
		}
		st.Ready.Store(true)
		if c := code("/readyz"); c != http.StatusOK {
			t.Errorf("/readyz = %d when ready", c)
		}
		wantPprof := http.StatusNotFound
		if pprofOn {
			wantPprof = http.StatusOK
		}
		if c := code("/debug/pprof/goroutine?debug=1"); c != wantPprof {
			t.Errorf("pprof %v: /debug/pprof/goroutine = %d, want %d", pprofOn, c, wantPprof)
		}
		if c := code("/debug/pprof/cmdline"); c != http.StatusNotFound {
			t.Errorf("pprof %v: /debug/pprof/cmdline = %d: the command line is configuration", pprofOn, c)
		}
	}
}

// TestSummaryAttrs: the summary line's rates are over the period, and
// a partition that left does not make them negative.
func TestSummaryAttrs(t *testing.T) {
	st := &engine.Status{}
	t0 := time.Unix(1000, 0)
	prev := totals{at: t0, records: 1000, written: 500, isNew: 100, late: 3, dead: 2, checkpoints: 4}
	cur := totals{at: t0.Add(10 * time.Second), records: 3000, written: 2500, isNew: 300, late: 5, dead: 2, checkpoints: 9,
		lag: 7, held: 2, minWatermark: t0.Add(-time.Minute).UnixMilli(), partitions: 2}
	got := map[string]any{}
	attrs := summaryAttrs(prev, cur, st)
	for i := 0; i < len(attrs); i += 2 {
		got[attrs[i].(string)] = attrs[i+1]
	}
	wantAttrs := map[string]any{"records_per_sec": 200.0, "rows_written_per_sec": 200.0, "new_per_sec": 20.0, "late": int64(2),
		"dead_lettered": int64(0), "lag": int64(7), "held": int64(2), "checkpoints": uint64(5), "partitions": 2,
		"watermark_delay": 70 * time.Second}
	for k, v := range wantAttrs {
		if got[k] != v {
			t.Errorf("%s = %v (%T), want %v", k, got[k], got[k], v)
		}
	}
	shrunk := cur
	shrunk.records, shrunk.at = 10, cur.at.Add(time.Second)
	for i, a := range summaryAttrs(cur, shrunk, st) {
		if a == "records_per_sec" {
			if r := summaryAttrs(cur, shrunk, st)[i+1]; r != 0.0 {
				t.Errorf("records_per_sec after a partition left = %v, want 0", r)
			}
		}
	}
}

// scrapeMetrics reads /metrics with the parser of `firstseen status`.
func scrapeMetrics(t *testing.T, base string) *scrapeResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := scrape(ctx, http.DefaultClient, base+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sumOf(sum float64, _ uint64) float64 { return sum }
func countOf(_ float64, n uint64) uint64  { return n }

// hasLabel says whether a sample of the family carries the label.
func hasLabel(fam *dto.MetricFamily, label string) bool {
	for _, m := range fam.Metric {
		for _, l := range m.Label {
			if l.GetName() == label {
				return true
			}
		}
	}
	return false
}

// get fetches url; code 0 means no answer.
func get(url string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitFor polls cond until it holds, failing after a minute or if the
// process exits.
func waitFor(t *testing.T, p *proc, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(50 * time.Millisecond) {
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("waiting for %s (exited %v: %v):\n%s", what, p.exited(), p.err, tail(p.out.String(), 3000))
		}
	}
}

type responseRecorder struct {
	header http.Header
	code   int
}

func (r *responseRecorder) Header() http.Header { return r.header }
func (r *responseRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return len(b), nil
}
func (r *responseRecorder) WriteHeader(code int) { r.code = code }

func mustRequest(t *testing.T, path string) *http.Request {
	req, err := http.NewRequest(http.MethodGet, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
