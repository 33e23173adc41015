package validate

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var monitoringDir = filepath.Join(deployDir, "monitoring")

// promtool returns promtool's path, failing the test (not skipping it)
// when it is missing: make test installs it.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := Promtool()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMonitoring checks deploy/monitoring as it is: no problem at all.
func TestMonitoring(t *testing.T) {
	for _, p := range CheckMonitoring(monitoringDir, promtool(t), t.TempDir()) {
		t.Error(p)
	}
}

// TestDashboardShowsEveryMetric requires the dashboard to have the rows of
// issue #7, a panel for every firstseen_* metric of metrics.txt, and every
// other metric listed to be used by the dashboard or the rules (so the
// list is exactly what the monitoring depends on, plus firstseen's own).
func TestDashboardShowsEveryMetric(t *testing.T) {
	specs, err := ReadMetricList(filepath.Join(monitoringDir, MetricListFile))
	if err != nil {
		t.Fatal(err)
	}
	series := SeriesNames(specs)
	data, err := os.ReadFile(filepath.Join(monitoringDir, DashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	dq, rows, problems := DashboardQueries(data)
	for _, p := range problems {
		t.Error(p)
	}
	for _, want := range []string{"Overview", "Lag & watermark", "Checkpoints", "Sink", "State & restore",
		"Dead letters, late, held & misplaced records", "Runtime"} {
		if !slices.Contains(rows, want) {
			t.Errorf("the dashboard has no row %q (rows: %q)", want, rows)
		}
	}
	rulesData, err := os.ReadFile(filepath.Join(monitoringDir, AlertsFile))
	if err != nil {
		t.Fatal(err)
	}
	rules, err := ReadRules(rulesData)
	if err != nil {
		t.Fatal(err)
	}
	rq, _ := RuleQueries(rules, nil)
	onDashboard, anywhere := map[string]bool{}, map[string]bool{}
	for _, q := range dq {
		used, _ := CheckQuery(q, series)
		for _, m := range used {
			onDashboard[m], anywhere[m] = true, true
		}
	}
	for _, q := range rq {
		used, _ := CheckQuery(q, series)
		for _, m := range used {
			anywhere[m] = true
		}
	}
	for _, s := range specs {
		switch {
		case strings.HasPrefix(s.Name, "firstseen_") && !onDashboard[s.Name]:
			t.Errorf("%s is in %s but on no panel of the dashboard", s.Name, MetricListFile)
		case !anywhere[s.Name]:
			t.Errorf("%s is in %s but neither the dashboard nor the rules use it: drop it from the list", s.Name, MetricListFile)
		}
	}
}

// copyMonitoring copies deploy/monitoring to a new directory.
func copyMonitoring(t *testing.T) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(monitoringDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(monitoringDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// editDashboard decodes the dashboard in dir, lets edit change it, and
// writes it back.
func editDashboard(t *testing.T, dir string, edit func(d map[string]any)) {
	t.Helper()
	file := filepath.Join(dir, DashboardFile)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	edit(d)
	if data, err = json.MarshalIndent(d, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// panelTitled returns the dashboard panel (in a row or not) with the title.
func panelTitled(t *testing.T, d map[string]any, title string) map[string]any {
	t.Helper()
	var found map[string]any
	var walk func(ps []any)
	walk = func(ps []any) {
		for _, p := range ps {
			if jstr(p, "title") == title && found == nil {
				found = p.(map[string]any)
			}
			walk(jlist(p, "panels"))
		}
	}
	walk(jlist(d, "panels"))
	if found == nil {
		t.Fatalf("the dashboard has no panel %q: update this test", title)
	}
	return found
}

// TestBrokenMonitoringIsRejected breaks a copy of deploy/monitoring in the
// ways people do and requires CheckMonitoring to report each, in one
// problem that holds every string of want.
func TestBrokenMonitoringIsRejected(t *testing.T) {
	pt := promtool(t)
	replace := func(file, old, new string) func(*testing.T, string) {
		return func(t *testing.T, dir string) { replaceOnce(t, filepath.Join(dir, file), old, new) }
	}
	cases := []struct {
		name   string
		break_ func(*testing.T, string)
		want   []string
	}{
		{"misspelled metric in a panel",
			replace(DashboardFile, "sum by (instance) (firstseen_restore_remaining_records{", "sum by (instance) (firstseen_restore_remaining_record{"),
			[]string{`"Restore: records remaining"`, `metric "firstseen_restore_remaining_record" is not in metrics.txt`}},
		{"misspelled metric in an alert",
			replace(AlertsFile, "expr: absent(firstseen_ready)", "expr: absent(firstseen_readiness)"),
			[]string{"alert FirstseenAbsent", `metric "firstseen_readiness" is not in metrics.txt`}},
		{"metric dropped from metrics.txt",
			replace(MetricListFile, "firstseen_held_records gauge partition\n", ""),
			[]string{`"Held records by partition"`, `metric "firstseen_held_records" is not in metrics.txt`}},
		{"histogram queried without _bucket",
			replace(DashboardFile, "histogram_quantile(0.5, sum by (le, sink) (rate(firstseen_sink_write_duration_seconds_bucket{",
				"histogram_quantile(0.5, sum by (le, sink) (rate(firstseen_sink_write_duration_seconds{"),
			[]string{`"Write latency"`, `metric "firstseen_sink_write_duration_seconds" is not in metrics.txt`}},
		{"misspelled label in a panel",
			replace(DashboardFile, "max by (partition) (firstseen_held_records{namespace=~", "max by (partition) (firstseen_held_records{namespce=~"),
			[]string{`"Held records by partition"`, `label "namespce"`}},
		{"misspelled grouping label in an alert",
			replace(AlertsFile, "max by (namespace, job, partition) (firstseen_watermark_delay_seconds) > 1800",
				"max by (namespace, job, partiton) (firstseen_watermark_delay_seconds) > 1800"),
			[]string{"alert FirstseenWatermarkStalled", `label "partiton"`}},
		{"syntax error in a panel",
			replace(DashboardFile, "(firstseen_last_checkpoint_timestamp_seconds{", "((firstseen_last_checkpoint_timestamp_seconds{"),
			[]string{"promtool check rules", `is panel 20 "Time since the last checkpoint", target A`}},
		{"syntax error in an alert",
			replace(AlertsFile, "          > 0.10\n", "          > > 0.10\n"),
			[]string{"promtool check rules", "FirstseenDeadLetterRatioHigh", "parse error"}},
		{"undefined variable",
			replace(DashboardFile, "firstseen_restore_remaining_records{namespace=~\\\"$namespace\\\"", "firstseen_restore_remaining_records{namespace=~\\\"$namespaces\\\""),
			[]string{`"Restore: records remaining"`, "undefined variable $namespaces"}},
		{"duplicate panel id",
			func(t *testing.T, dir string) {
				editDashboard(t, dir, func(d map[string]any) {
					panelTitled(t, d, "GC cycles")["id"] = panelTitled(t, d, "Throughput")["id"]
				})
			},
			[]string{"panel id 8 is used twice", `"Throughput"`, `"GC cycles"`}},
		{"hard-coded data source",
			func(t *testing.T, dir string) {
				editDashboard(t, dir, func(d map[string]any) {
					panelTitled(t, d, "CPU")["datasource"] = map[string]any{"type": "prometheus", "uid": "prometheus-prod"}
				})
			},
			[]string{`"CPU"`, "prometheus-prod", "want the variable ${datasource}"}},
		{"no data source variable",
			func(t *testing.T, dir string) {
				editDashboard(t, dir, func(d map[string]any) {
					vars := jlist(d, "templating", "list")
					d["templating"].(map[string]any)["list"] = vars[1:]
				})
			},
			[]string{`no template variable of type "datasource"`}},
		{"panel without targets",
			func(t *testing.T, dir string) {
				editDashboard(t, dir, func(d map[string]any) { panelTitled(t, d, "Memory")["targets"] = []any{} })
			},
			[]string{`"Memory" has no targets`}},
		{"panel off the grid",
			func(t *testing.T, dir string) {
				editDashboard(t, dir, func(d map[string]any) {
					panelTitled(t, d, "Batch rows")["gridPos"].(map[string]any)["x"] = 20
				})
			},
			[]string{`"Batch rows"`, "24-column grid"}},
		{"threshold the unit tests disagree with",
			replace(AlertsFile, "(firstseen_consumer_lag_records) > 100000", "(firstseen_consumer_lag_records) > 1000000"),
			[]string{"promtool test rules", "FirstseenConsumerLagGrowing"}},
		{"alert without a severity",
			replace(AlertsFile, "        labels:\n          severity: critical\n        annotations:\n          summary: \"No firstseen",
				"        labels:\n          team: data\n        annotations:\n          summary: \"No firstseen"),
			[]string{"alert FirstseenAbsent", `severity label ""`}},
		{"alert without a runbook",
			replace(AlertsFile, "          runbook_url: \"https://github.com/firstseen/firstseen/blob/main/deploy/monitoring/README.md#firstseenabsent\"\n", ""),
			[]string{"alert FirstseenAbsent", "no runbook_url annotation"}},
		{"runbook section missing",
			replace(MonitoringDocs, "### FirstseenRestarting\n", "### Restarts\n"),
			[]string{"alert FirstseenRestarting", "#firstseenrestarting, a heading of README.md"}},
		{"misspelled series in a unit test",
			replace(AlertTestsFile, "firstseen_misplaced_records_total{namespace=\"staging\"", "firstseen_misplaced_record_total{namespace=\"staging\""),
			[]string{`test "misplaced records"`, `metric "firstseen_misplaced_record_total"`}},
		{"alert without a case where it must not fire",
			func(t *testing.T, dir string) {
				file := filepath.Join(dir, AlertTestsFile)
				data, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				s := string(data)
				i := strings.Index(s, "\n  - name: misplaced records healthy\n")
				if i < 0 {
					t.Fatal("no test \"misplaced records healthy\": update this test")
				}
				if err := os.WriteFile(file, []byte(s[:i+1]), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			[]string{"alert FirstseenMisplacedRecords: no test where it must not fire"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyMonitoring(t)
			c.break_(t, dir)
			problems := CheckMonitoring(dir, pt, t.TempDir())
			if len(problems) == 0 {
				t.Fatal("the broken copy passed every check")
			}
			for _, p := range problems {
				ok := true
				for _, w := range c.want {
					ok = ok && strings.Contains(p, w)
				}
				if ok {
					t.Logf("caught, as it should be: %s", p)
					return
				}
			}
			t.Errorf("no problem reports all of %q; the problems:\n%s", c.want, strings.Join(problems, "\n"))
		})
	}
}

// TestPromtoolChecksQueries shows that the promtool step alone rejects a
// broken query, and that the dashboard's variables must be replaced before
// promtool sees a query: `[$__rate_interval]` is not PromQL.
func TestPromtoolChecksQueries(t *testing.T) {
	pt := promtool(t)
	good := Query{Where: "good", Expr: `sum(rate(firstseen_input_records_total{instance=~".*"}[4m]))`}
	if err := PromtoolCheckQueries(pt, t.TempDir(), []Query{good}); err != nil {
		t.Fatalf("a valid query was rejected: %v", err)
	}
	raw := `sum(rate(firstseen_input_records_total{instance=~"$instance"}[$__rate_interval]))`
	for _, q := range []Query{
		{Where: "unbalanced", Expr: `sum(rate(firstseen_input_records_total[5m])`},
		{Where: "unknown function", Expr: `rates(firstseen_input_records_total[5m])`},
		{Where: "range where a vector goes", Expr: `firstseen_input_records_total[5m] > 0`},
		{Where: "variables left in", Expr: raw},
	} {
		err := PromtoolCheckQueries(pt, t.TempDir(), []Query{good, q})
		if err == nil {
			t.Errorf("%s: promtool accepted %q", q.Where, q.Expr)
		} else if !strings.Contains(err.Error(), "query_002 is "+q.Where) {
			t.Errorf("%s: the error does not name the query: %v", q.Where, err)
		}
	}
	sub, err := SubstituteVariables(raw, map[string]string{"instance": ".*"})
	if err != nil {
		t.Fatal(err)
	}
	if err := PromtoolCheckQueries(pt, t.TempDir(), []Query{{Where: "substituted", Expr: sub}}); err != nil {
		t.Errorf("the substituted query %q was rejected: %v", sub, err)
	}
}

func TestSubstituteVariables(t *testing.T) {
	vars := map[string]string{"instance": ".*", "job": "firstseen"}
	for in, want := range map[string]string{
		`rate(x{instance=~"$instance"}[$__rate_interval])`: `rate(x{instance=~".*"}[4m])`,
		`x{job="${job}", instance=~"${instance:regex}"}`:   `x{job="firstseen", instance=~".*"}`,
		`x{job="[[job]]"}[$__range]`:                       `x{job="firstseen"}[1h]`,
		`label_replace(x, "a", "$1", "b", "(.*)")`:         `label_replace(x, "a", "$1", "b", "(.*)")`,
	} {
		got, err := SubstituteVariables(in, vars)
		if err != nil || got != want {
			t.Errorf("SubstituteVariables(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := SubstituteVariables(`x{pod=~"$pod"}`, vars); err == nil || !strings.Contains(err.Error(), "$pod") {
		t.Errorf("an undefined variable: err %v, want it named", err)
	}
}

func TestCheckQuery(t *testing.T) {
	series := SeriesNames([]MetricSpec{
		{Name: "firstseen_input_records_total", Type: "counter", Labels: []string{"partition"}},
		{Name: "firstseen_checkpoint_duration_seconds", Type: "histogram"},
		{Name: "go_gc_duration_seconds", Type: "summary"},
	})
	for expr, want := range map[string]string{
		`sum by (partition) (rate(firstseen_input_records_total{partition="1", pod=~"x.*"}[5m]))`:                     "",
		`histogram_quantile(0.9, sum by (le) (rate(firstseen_checkpoint_duration_seconds_bucket[5m])))`:               "",
		`rate(firstseen_checkpoint_duration_seconds_sum[5m]) / rate(firstseen_checkpoint_duration_seconds_count[5m])`: "",
		`go_gc_duration_seconds{quantile="1"}`:                                                  "",
		`{__name__="firstseen_input_records_total"}`:                                            "",
		`firstseen_input_records`:                                                               `metric "firstseen_input_records" is not in`,
		`firstseen_checkpoint_duration_seconds`:                                                 `metric "firstseen_checkpoint_duration_seconds" is not in`,
		`firstseen_checkpoint_duration_seconds_sum{le="1"}`:                                     `label "le"`,
		`firstseen_input_records_total{sink="x"}`:                                               `label "sink"`,
		`sum by (partiton) (firstseen_input_records_total)`:                                     `label "partiton"`,
		`firstseen_input_records_total / on (instance, partiton) firstseen_input_records_total`: `label "partiton"`,
		`{__name__=~"firstseen_.*"}`:                                                            "by a pattern",
		`sum(firstseen_input_records_total`:                                                     "unclosed",
	} {
		_, problems := CheckQuery(Query{Where: "q", Expr: expr}, series)
		got := strings.Join(problems, "\n")
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("CheckQuery(%q): %q, want %q", expr, got, want)
		}
	}
}
