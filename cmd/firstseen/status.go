package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// firstseen status: a live one-screen view of a running processor, read
// from its /metrics (the same numbers Prometheus scrapes, so what the
// on-call engineer sees and what the dashboard shows cannot disagree).

func newStatusCmd() *cobra.Command {
	var (
		addr     string
		interval time.Duration
		once     bool
	)
	cmd := &cobra.Command{
		Use:   "status [--metrics-addr HOST:PORT]",
		Short: "Show a live view of a running processor: partitions, lag, watermarks, rates, checkpoints",
		Long: `status reads a running 'firstseen run' process's metrics (its --metrics-addr)
every --interval and shows, on one screen:

  - per partition: the next offset, the lag, the watermark and how far it is
    behind the wall clock, held records, the input rate, the state's size;
  - the rates of records in, rows written, new users, late records and dead
    letters, over the last interval;
  - restores in progress, checkpoints (count, failures, age and duration of
    the last ones) and the sink's retries and errors.

On a terminal the screen is redrawn in place until Ctrl-C, with rates over
the last 10 seconds; otherwise (or with --once) it prints one view, with
rates over one --interval, and exits. It exits 1 when the process cannot be
reached with --once.`,
		Example: `  firstseen status --metrics-addr localhost:9090
  kubectl port-forward pod/firstseen-0 9090 & firstseen status --metrics-addr localhost:9090
  firstseen status --metrics-addr firstseen-1.firstseen:9090 --once`,
		Args:    noArgs,
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval < 100*time.Millisecond {
				return usageError{fmt.Errorf("--interval %s must be at least 100ms", interval)}
			}
			url, err := metricsURL(addr)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			live := !once && term.IsTerminal(int(os.Stdout.Fd()))
			return watchStatus(ctx, cmd.OutOrStdout(), url, interval, live)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&addr, "metrics-addr", "localhost:9090", "the --metrics-addr of the processor to watch, host:port (or an http:// URL)")
	fs.DurationVar(&interval, "interval", time.Second, "how often the view is refreshed")
	fs.BoolVar(&once, "once", false, "print one view and exit (the default when stdout is not a terminal)")
	return cmd
}

// metricsURL turns --metrics-addr into the URL of /metrics.
func metricsURL(addr string) (string, error) {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimSuffix(addr, "/") + "/metrics", nil
	}
	if err := checkHostPorts("metrics-addr", []string{addr}); err != nil {
		return "", err
	}
	if strings.HasPrefix(addr, ":") {
		addr = "localhost" + addr
	}
	return "http://" + addr + "/metrics", nil
}

// watchStatus scrapes url every interval and renders the view: redrawn in
// place when live, printed once otherwise.
func watchStatus(ctx context.Context, w io.Writer, url string, interval time.Duration, live bool) error {
	client := &http.Client{Timeout: max(interval, 2*time.Second)}
	prev, err := scrape(ctx, client, url)
	if err != nil && !live {
		return err
	}
	var history []*scrapeResult
	if prev != nil {
		history = append(history, prev)
	}
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
		}
		cur, err := scrape(ctx, client, url)
		if !live {
			if err != nil {
				return err
			}
			renderStatus(w, url, prev, cur)
			return nil
		}
		fmt.Fprint(w, "\x1b[H\x1b[2J") // home, clear screen
		if err != nil {
			fmt.Fprintf(w, "%s\n\n%v\nretrying every %s; Ctrl-C to quit\n", time.Now().Format(time.TimeOnly), err, interval)
			history = history[:0]
			continue
		}
		// Rates over up to rateWindow: checkpoints write in bursts, so a
		// one-second rate of rows written would jump between 0 and peaks.
		history = append(history, cur)
		for len(history) > 2 && cur.at.Sub(history[0].at) > rateWindow {
			history = history[1:]
		}
		renderStatus(w, url, history[0], cur)
	}
}

// rateWindow is the span the live view's rates are averaged over.
const rateWindow = 10 * time.Second

// scrapeResult is one scrape of /metrics.
type scrapeResult struct {
	at       time.Time
	families map[string]*dto.MetricFamily
}

func scrape(ctx context.Context, client *http.Client, url string) (*scrapeResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the processor's metrics at %s: %v (is 'firstseen run' running with this --metrics-addr?)", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s: not Prometheus text format: %v", url, err)
	}
	if _, ok := fams["firstseen_ready"]; !ok {
		return nil, fmt.Errorf("%s serves metrics, but not a firstseen processor's", url)
	}
	return &scrapeResult{at: time.Now(), families: fams}, nil
}

// value is the sum of a metric's samples whose labels include want
// (label=value pairs); 0 if there are none.
func (s *scrapeResult) value(name string, want ...string) float64 {
	fam := s.families[name]
	if fam == nil {
		return 0
	}
	var sum float64
	for _, m := range fam.Metric {
		if !hasLabels(m, want) {
			continue
		}
		switch {
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Untyped != nil:
			sum += m.Untyped.GetValue()
		}
	}
	return sum
}

// histogram is the sum and count of a histogram's samples.
func (s *scrapeResult) histogram(name string) (sum float64, count uint64) {
	fam := s.families[name]
	if fam == nil {
		return 0, 0
	}
	for _, m := range fam.Metric {
		if h := m.Histogram; h != nil {
			sum += h.GetSampleSum()
			count += h.GetSampleCount()
		}
	}
	return sum, count
}

func hasLabels(m *dto.Metric, want []string) bool {
	for i := 0; i+1 < len(want); i += 2 {
		found := false
		for _, l := range m.Label {
			if l.GetName() == want[i] && l.GetValue() == want[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// label is the value of a label of a metric's first sample.
func (s *scrapeResult) label(name, label string) string {
	if fam := s.families[name]; fam != nil && len(fam.Metric) > 0 {
		for _, l := range fam.Metric[0].Label {
			if l.GetName() == label {
				return l.GetValue()
			}
		}
	}
	return ""
}

// partitions are the partition labels present, in numeric order.
func (s *scrapeResult) partitions() []string {
	seen := map[string]bool{}
	if fam := s.families["firstseen_input_offset"]; fam != nil {
		for _, m := range fam.Metric {
			for _, l := range m.Label {
				if l.GetName() == "partition" {
					seen[l.GetValue()] = true
				}
			}
		}
	}
	var out []string
	for p := range seen {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b string) int {
		x, _ := strconv.Atoi(a)
		y, _ := strconv.Atoi(b)
		return x - y
	})
	return out
}

// renderStatus writes one view: the rates are over prev to cur.
func renderStatus(w io.Writer, url string, prev, cur *scrapeResult) {
	secs := cur.at.Sub(prev.at).Seconds()
	rate := func(name string, labels ...string) string {
		if secs <= 0 {
			return "-"
		}
		d := cur.value(name, labels...) - prev.value(name, labels...)
		if d < 0 { // a partition moved away: its counters went with it
			d = 0
		}
		return humanRate(d / secs)
	}
	ready := "NOT READY (restoring, or before the first checkpoint)"
	if cur.value("firstseen_ready") == 1 {
		ready = "ready"
	}
	version := cur.label("firstseen_build_info", "version")
	if rev := cur.label("firstseen_build_info", "revision"); len(rev) >= 12 {
		version += " " + rev[:12]
	}
	fmt.Fprintf(w, "firstseen %s   %s   %s\n", version, url, cur.at.Format("2006-01-02 15:04:05"))
	fmt.Fprintf(w, "%s, %d partitions", ready, int(cur.value("firstseen_partitions")))
	if r := cur.value("firstseen_restoring_partitions"); r > 0 {
		fmt.Fprintf(w, ", %d restoring (%s changelog records to go)", int(r), humanCount(cur.value("firstseen_restore_remaining_records")))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "rates (per second, over the last %s)\n", cur.at.Sub(prev.at).Round(100*time.Millisecond))
	fmt.Fprintf(w, "  in %s   written %s   new users %s   late %s   dead letters %s\n",
		rate("firstseen_input_records_total"), rate("firstseen_written_rows_total"), rate("firstseen_new_rows_total"),
		rate("firstseen_late_records_total"), rate("firstseen_dead_letter_records_total"))
	fmt.Fprintf(w, "  held %s records   lag %s records\n", humanCount(cur.value("firstseen_held_records")),
		humanCount(cur.value("firstseen_consumer_lag_records")))
	fmt.Fprintln(w)

	cps := cur.value("firstseen_checkpoints_total")
	fmt.Fprintf(w, "checkpoints  %d taken, %d failed", int(cps), int(cur.value("firstseen_checkpoint_failures_total")))
	if last := cur.value("firstseen_last_checkpoint_timestamp_seconds"); last > 0 {
		age := cur.at.Sub(time.UnixMilli(int64(last * 1000)))
		fmt.Fprintf(w, ", last %s ago", age.Round(100*time.Millisecond))
	}
	sum, n := cur.histogram("firstseen_checkpoint_duration_seconds")
	psum, pn := prev.histogram("firstseen_checkpoint_duration_seconds")
	if n > pn {
		fmt.Fprintf(w, ", took %s", seconds((sum-psum)/float64(n-pn)))
	} else if n > 0 {
		fmt.Fprintf(w, ", took %s on average", seconds(sum/float64(n)))
	}
	if rsum, rn := cur.histogram("firstseen_checkpoint_rows"); rn > 0 {
		fmt.Fprintf(w, ", %s rows each on average", humanCount(rsum/float64(rn)))
	}
	fmt.Fprintln(w)
	ssum, sn := cur.histogram("firstseen_sink_write_duration_seconds")
	fmt.Fprintf(w, "sink         %s: %d writes", cur.label("firstseen_sink_write_duration_seconds", "sink"), sn)
	if sn > 0 {
		fmt.Fprintf(w, " of %s on average", seconds(ssum/float64(sn)))
	}
	fmt.Fprintf(w, ", %d retries, %d errors\n", int(cur.value("firstseen_sink_retries_total")), int(cur.value("firstseen_sink_errors_total")))
	if m := cur.value("firstseen_misplaced_records_total"); m > 0 {
		fmt.Fprintf(w, "WARNING      %s records were not on their uuid's partition: key by the canonical uuid or use --repartition\n", humanCount(m))
	}
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PARTITION\tOFFSET\tLAG\tIN/S\tWATERMARK (UTC)\tBEHIND\tHELD\tSTATE\t")
	for _, p := range cur.partitions() {
		wm, behind := "-", "-"
		if ts := cur.value("firstseen_watermark_timestamp_seconds", "partition", p); ts > 0 {
			wm = time.UnixMilli(int64(ts * 1000)).UTC().Format("2006-01-02 15:04:05")
			behind = cur.at.Sub(time.UnixMilli(int64(ts * 1000))).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", p,
			int64(cur.value("firstseen_input_offset", "partition", p)),
			humanCount(cur.value("firstseen_consumer_lag_records", "partition", p)),
			rate("firstseen_input_records_total", "partition", p), wm, behind,
			humanCount(cur.value("firstseen_held_records", "partition", p)),
			humanBytes(cur.value("firstseen_state_size_bytes", "partition", p)))
	}
	tw.Flush()
}

func humanRate(v float64) string {
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return humanCount(v)
}

func humanCount(v float64) string {
	switch {
	case v >= 10e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 10e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return strconv.FormatInt(int64(v), 10)
}

func humanBytes(v float64) string {
	switch {
	case v >= 1<<30:
		return fmt.Sprintf("%.1f GiB", v/(1<<30))
	case v >= 1<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case v >= 1<<10:
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	}
	return fmt.Sprintf("%d B", int64(v))
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(100 * time.Microsecond).String()
}
