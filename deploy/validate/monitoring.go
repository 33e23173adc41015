package validate

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// The monitoring artifacts in deploy/monitoring: a Grafana dashboard, a
// Prometheus rule file with its promtool unit tests, and metrics.txt, the
// list of the metrics firstseen serves. Every query in the dashboard (panel
// targets, annotations, template variables) and in the rules must be valid
// PromQL, which promtool decides, and must use only the metrics and labels
// of metrics.txt, which the PromQL parser's syntax tree shows.

// File names in deploy/monitoring.
const (
	MetricListFile = "metrics.txt"
	DashboardFile  = "firstseen-dashboard.json"
	AlertsFile     = "firstseen-alerts.yaml"
	AlertTestsFile = "firstseen-alerts_test.yaml"
	MonitoringDocs = "README.md"
)

// TargetLabels are the labels Prometheus attaches to every series of a
// scrape target (namespace and pod come from Kubernetes service
// discovery). Queries may use them with any metric.
var TargetLabels = []string{"job", "instance", "namespace", "pod"}

// Severities are the values an alert's severity label may take.
var Severities = []string{"critical", "warning", "info"}

// A MetricSpec is one line of metrics.txt: a metric's name, type and own
// labels.
type MetricSpec struct {
	Name   string
	Type   string // counter, gauge, histogram or summary
	Labels []string
}

var metricNameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
var labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// ReadMetricList parses metrics.txt.
func ReadMetricList(path string) ([]MetricSpec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var specs []MetricSpec
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("%s:%d: want a name and a type, got %q", path, n, line)
		}
		s := MetricSpec{Name: f[0], Type: f[1], Labels: f[2:]}
		if !metricNameRE.MatchString(s.Name) {
			return nil, fmt.Errorf("%s:%d: %q is not a metric name", path, n, s.Name)
		}
		if !slices.Contains([]string{"counter", "gauge", "histogram", "summary"}, s.Type) {
			return nil, fmt.Errorf("%s:%d: %s: type %q is not counter, gauge, histogram or summary", path, n, s.Name, s.Type)
		}
		for _, l := range s.Labels {
			if !labelNameRE.MatchString(l) || strings.HasPrefix(l, "__") || slices.Contains(TargetLabels, l) {
				return nil, fmt.Errorf("%s:%d: %s: %q cannot be a label of the metric", path, n, s.Name, l)
			}
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("%s:%d: %s is listed twice", path, n, s.Name)
		}
		seen[s.Name] = true
		specs = append(specs, s)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("%s lists no metric", path)
	}
	return specs, nil
}

// A Series is a name a query can select, and the labels its series carry
// (the target's included).
type Series struct {
	Metric string // the metric of metrics.txt it belongs to
	Labels []string
}

// SeriesNames returns every name that a query may select for the metrics:
// a counter or gauge by its name, a histogram as <name>_bucket (with le),
// <name>_sum and <name>_count, a summary as <name> (with quantile),
// <name>_sum and <name>_count.
func SeriesNames(specs []MetricSpec) map[string]Series {
	out := map[string]Series{}
	for _, s := range specs {
		own := append(slices.Clone(TargetLabels), s.Labels...)
		switch s.Type {
		case "histogram":
			out[s.Name+"_bucket"] = Series{s.Name, append(slices.Clone(own), "le")}
			out[s.Name+"_sum"] = Series{s.Name, own}
			out[s.Name+"_count"] = Series{s.Name, own}
		case "summary":
			out[s.Name] = Series{s.Name, append(slices.Clone(own), "quantile")}
			out[s.Name+"_sum"] = Series{s.Name, own}
			out[s.Name+"_count"] = Series{s.Name, own}
		default:
			out[s.Name] = Series{s.Name, own}
		}
	}
	return out
}

// A Query is a PromQL expression of a dashboard or rule file, with the
// place it was found.
type Query struct {
	Where string // e.g. `panel 12 "Consumer lag by partition", target A`
	Expr  string // as checked: Grafana variables substituted
}

// CheckQuery parses q.Expr with the PromQL parser and reports what is
// wrong: a syntax error, a selector without a metric name, a name that is
// not in series, a matcher on a label that the metric does not carry, or a
// grouping (by, without, on, ignoring, group_left, group_right) on a label
// that no metric carries. It returns the metrics of series it uses.
func CheckQuery(q Query, series map[string]Series) (used []string, problems []string) {
	bad := func(format string, args ...any) {
		problems = append(problems, q.Where+": "+fmt.Sprintf(format, args...))
	}
	expr, err := parser.ParseExpr(q.Expr)
	if err != nil {
		bad("%v in %q", err, q.Expr)
		return nil, problems
	}
	anyLabel := map[string]bool{}
	for _, s := range series {
		for _, l := range s.Labels {
			anyLabel[l] = true
		}
	}
	checkGrouping := func(ls []string) {
		for _, l := range ls {
			if !anyLabel[l] {
				bad("groups by label %q, which no metric of %s carries", l, MetricListFile)
			}
		}
	}
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			name := n.Name
			for _, m := range n.LabelMatchers {
				if m.Name == labels.MetricName {
					if m.Type != labels.MatchEqual {
						bad("selects metric names by a pattern (%s): name them", m)
						return nil
					}
					name = m.Value
				}
			}
			s, ok := series[name]
			if !ok {
				bad("metric %q is not in %s", name, MetricListFile)
				return nil
			}
			used = append(used, s.Metric)
			for _, m := range n.LabelMatchers {
				if m.Name != labels.MetricName && !slices.Contains(s.Labels, m.Name) {
					bad("matches label %q, which %s does not carry (it has %s)", m.Name, name, strings.Join(s.Labels, ", "))
				}
			}
		case *parser.AggregateExpr:
			checkGrouping(n.Grouping)
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				checkGrouping(n.VectorMatching.MatchingLabels)
				checkGrouping(n.VectorMatching.Include)
			}
		}
		return nil
	})
	return used, problems
}

// Grafana's built-in variables, as a query sees them with a 1m scrape
// interval over a 1h range.
var grafanaBuiltins = map[string]string{
	"__rate_interval":    "4m",
	"__interval":         "1m",
	"__interval_ms":      "60000",
	"__range":            "1h",
	"__range_s":          "3600",
	"__range_ms":         "3600000",
	"__rate_interval_ms": "240000",
}

// grafanaVarRE matches $name, ${name}, ${name:format} and [[name]].
var grafanaVarRE = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]`)

// SubstituteVariables replaces the Grafana variables in expr by values a
// query can have: vars (the dashboard's own), or a built-in such as
// $__rate_interval. A variable that is neither is an error. $1, $2 ...
// (label_replace's references) are not variables.
func SubstituteVariables(expr string, vars map[string]string) (string, error) {
	var undefined []string
	out := grafanaVarRE.ReplaceAllStringFunc(expr, func(m string) string {
		sub := grafanaVarRE.FindStringSubmatch(m)
		name := sub[1] + sub[2] + sub[3]
		if v, ok := vars[name]; ok {
			return v
		}
		if v, ok := grafanaBuiltins[name]; ok {
			return v
		}
		if _, err := strconv.Atoi(name); err == nil {
			return m
		}
		undefined = append(undefined, "$"+name)
		return m
	})
	if len(undefined) > 0 {
		return out, fmt.Errorf("undefined variable %s", strings.Join(undefined, ", "))
	}
	return out, nil
}

// DashboardQueries checks the structure of a Grafana dashboard and
// returns its PromQL queries with the variables substituted: the panels'
// targets, the Prometheus annotations, and the selectors of the query
// variables (label_values(<selector>, <label>)).
//
// The structure: a title and uid; schemaVersion 36 or later; a template
// variable of type datasource for Prometheus, which every panel, target,
// annotation and query variable uses; panels (also inside rows) with
// unique ids, a type, a title and a place on the 24-column grid; every
// panel but a row has targets, each with an expr and a refId unique in
// its panel. Rows are returned by title in rows.
func DashboardQueries(data []byte) (queries []Query, rows []string, problems []string) {
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	var d map[string]any
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, nil, []string{fmt.Sprintf("not JSON: %v", err)}
	}
	if jstr(d, "title") == "" || jstr(d, "uid") == "" {
		bad("the dashboard needs a title and a uid")
	}
	if v, ok := jint(d, "schemaVersion"); !ok || v < 36 {
		bad("schemaVersion %v: want 36 (Grafana 9.4) or later", jget(d, "schemaVersion"))
	}

	// Template variables: the datasource one, and what the others stand
	// for in a query.
	dsVar := ""
	vars := map[string]string{}
	for _, v := range jlist(d, "templating", "list") {
		name := jstr(v, "name")
		switch jstr(v, "type") {
		case "datasource":
			if jstr(v, "query") == "prometheus" && dsVar == "" {
				dsVar = name
			}
		case "query", "custom":
			if b, _ := jget(v, "includeAll").(bool); b && jstr(v, "allValue") != "" {
				vars[name] = jstr(v, "allValue")
			} else if o := jstr(v, "options", 0, "value"); o != "" {
				vars[name] = o
			} else {
				vars[name] = ".*"
			}
		case "interval":
			vars[name] = "5m"
		case "constant", "textbox":
			vars[name] = jstr(v, "query")
		}
	}
	if dsVar == "" {
		bad(`no template variable of type "datasource" for Prometheus: panels must not name one data source`)
		dsVar = "datasource"
	}
	usesDS := func(where string, ds any, required bool) {
		if ds == nil && !required {
			return
		}
		uid := jstr(ds, "uid")
		if s, ok := ds.(string); ok {
			uid = s
		}
		if uid != "${"+dsVar+"}" && uid != "$"+dsVar {
			bad("%s: data source %v, want the variable ${%s}", where, ds, dsVar)
		}
	}
	add := func(where, expr string) {
		if strings.TrimSpace(expr) == "" {
			bad("%s: empty query", where)
			return
		}
		e, err := SubstituteVariables(expr, vars)
		if err != nil {
			bad("%s: %v in %q", where, err, expr)
			return
		}
		queries = append(queries, Query{Where: where, Expr: e})
	}

	for _, v := range jlist(d, "templating", "list") {
		if jstr(v, "type") != "query" {
			continue
		}
		where := fmt.Sprintf("variable %s", jstr(v, "name"))
		usesDS(where, jget(v, "datasource"), true)
		q := jstr(v, "query")
		if q == "" {
			q = jstr(v, "query", "query")
		}
		if m := regexp.MustCompile(`^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`).FindStringSubmatch(q); m != nil {
			// The label must be one the selector's series carry.
			add(where, fmt.Sprintf("group by (%s) (%s)", m[2], m[1]))
		} else if m := regexp.MustCompile(`^\s*query_result\((.*)\)\s*$`).FindStringSubmatch(q); m != nil {
			add(where, m[1])
		} else {
			bad("%s: query %q: want label_values(<selector>, <label>) or query_result(<query>)", where, q)
		}
	}

	for _, a := range jlist(d, "annotations", "list") {
		if b, _ := jget(a, "builtIn").(float64); b == 1 {
			continue
		}
		where := fmt.Sprintf("annotation %q", jstr(a, "name"))
		if t := jstr(a, "datasource", "type"); t != "prometheus" {
			bad("%s: data source type %q, want prometheus", where, t)
		}
		usesDS(where, jget(a, "datasource"), true)
		add(where, jstr(a, "expr"))
	}

	ids := map[int64]string{}
	var walk func(ps []any, inRow string)
	walk = func(ps []any, inRow string) {
		for _, p := range ps {
			title, typ := jstr(p, "title"), jstr(p, "type")
			id, ok := jint(p, "id")
			where := fmt.Sprintf("panel %d %q", id, title)
			switch {
			case !ok:
				bad("panel %q has no integer id", title)
			case ids[id] != "":
				bad("panel id %d is used twice: %q and %q", id, ids[id], title)
			default:
				ids[id] = title
			}
			if title == "" || typ == "" {
				bad("%s needs a title and a type", where)
			}
			gx, okx := jint(p, "gridPos", "x")
			gy, oky := jint(p, "gridPos", "y")
			gw, okw := jint(p, "gridPos", "w")
			gh, okh := jint(p, "gridPos", "h")
			if !okx || !oky || !okw || !okh || gx < 0 || gy < 0 || gw < 1 || gh < 1 || gx+gw > 24 {
				bad("%s: gridPos %v is not on the 24-column grid", where, jget(p, "gridPos"))
			}
			if typ == "row" {
				if inRow != "" {
					bad("%s: a row inside row %q", where, inRow)
				}
				rows = append(rows, title)
				if len(jlist(p, "targets")) > 0 {
					bad("%s: a row with targets", where)
				}
				walk(jlist(p, "panels"), title)
				continue
			}
			usesDS(where, jget(p, "datasource"), true)
			targets := jlist(p, "targets")
			if len(targets) == 0 {
				bad("%s has no targets", where)
			}
			refs := map[string]bool{}
			for _, t := range targets {
				ref := jstr(t, "refId")
				if ref == "" || refs[ref] {
					bad("%s: refId %q is empty or used twice", where, ref)
				}
				refs[ref] = true
				usesDS(where+", target "+ref, jget(t, "datasource"), false)
				add(where+", target "+ref, jstr(t, "expr"))
			}
		}
	}
	walk(jlist(d, "panels"), "")
	if len(ids) == 0 {
		bad("the dashboard has no panels")
	}
	return queries, rows, problems
}

// An AlertRule is a rule of a Prometheus rule file (an alert or a
// recording rule), as far as these checks need it.
type AlertRule struct {
	Group       string            `json:"-"`
	Alert       string            `json:"alert"`
	Record      string            `json:"record"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// ReadRules parses a Prometheus rule file.
func ReadRules(data []byte) ([]AlertRule, error) {
	var f struct {
		Groups []struct {
			Name  string      `json:"name"`
			Rules []AlertRule `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, err
	}
	var rules []AlertRule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			r.Group = g.Name
			rules = append(rules, r)
		}
	}
	if len(rules) == 0 {
		return nil, errors.New("no rules")
	}
	return rules, nil
}

// RuleQueries checks what promtool does not about the alerts of a rule
// file: each has a severity of Severities, and a summary, a description
// and a runbook_url whose #anchor is a heading of docs (the alert's name,
// lower case, as GitHub makes anchors). It returns the rules' queries.
func RuleQueries(rules []AlertRule, docs []byte) (queries []Query, problems []string) {
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(docs), "\n") {
		if h, ok := strings.CutPrefix(line, "#"); ok {
			anchors[githubAnchor(strings.TrimLeft(h, "#"))] = true
		}
	}
	for i, r := range rules {
		where := fmt.Sprintf("group %q, rule %d", r.Group, i+1)
		if r.Alert != "" {
			where = "alert " + r.Alert
			if sev := r.Labels["severity"]; sev != "" {
				where += " (" + sev + ")"
			}
			if !slices.Contains(Severities, r.Labels["severity"]) {
				problems = append(problems, fmt.Sprintf("%s: severity label %q, want one of %s", where, r.Labels["severity"], strings.Join(Severities, ", ")))
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					problems = append(problems, fmt.Sprintf("%s: no %s annotation", where, a))
				}
			}
			if u := r.Annotations["runbook_url"]; u != "" {
				_, anchor, _ := strings.Cut(u, "#")
				if anchor != strings.ToLower(r.Alert) || !anchors[anchor] {
					problems = append(problems, fmt.Sprintf("%s: runbook_url %q: want #%s, a heading of %s", where, u, strings.ToLower(r.Alert), MonitoringDocs))
				}
			}
		} else if r.Record != "" {
			where = "recording rule " + r.Record
		}
		queries = append(queries, Query{Where: where, Expr: r.Expr})
	}
	return queries, problems
}

// githubAnchor is the anchor GitHub gives a Markdown heading.
func githubAnchor(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(h)) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

// RuleTestCoverage checks a promtool unit-test file against the alerts:
// every alert has a case where it fires (exp_alerts not empty) and one
// where it must not (exp_alerts empty), the file loads rulesFile, and
// every input series is of a metric in series (a misspelled series would
// make a "does not fire" case pass for the wrong reason).
func RuleTestCoverage(data []byte, rulesFile string, alerts []string, series map[string]Series) (problems []string) {
	var f struct {
		RuleFiles []string `json:"rule_files"`
		Tests     []struct {
			Name        string `json:"name"`
			InputSeries []struct {
				Series string `json:"series"`
			} `json:"input_series"`
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		return []string{err.Error()}
	}
	if !slices.Contains(f.RuleFiles, rulesFile) {
		problems = append(problems, fmt.Sprintf("rule_files %v does not load %s", f.RuleFiles, rulesFile))
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, t := range f.Tests {
		for _, s := range t.InputSeries {
			ls, err := parser.ParseMetric(s.Series)
			if err != nil {
				problems = append(problems, fmt.Sprintf("test %q: series %q: %v", t.Name, s.Series, err))
				continue
			}
			name := ls.Get(labels.MetricName)
			if _, ok := series[name]; !ok {
				problems = append(problems, fmt.Sprintf("test %q: series of metric %q, which is not in %s", t.Name, name, MetricListFile))
			}
		}
		for _, a := range t.AlertRuleTest {
			if !slices.Contains(alerts, a.Alertname) {
				problems = append(problems, fmt.Sprintf("test %q: alert %q is not in %s", t.Name, a.Alertname, rulesFile))
			}
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	for _, a := range alerts {
		if !fires[a] {
			problems = append(problems, fmt.Sprintf("alert %s: no test where it fires", a))
		}
		if !silent[a] {
			problems = append(problems, fmt.Sprintf("alert %s: no test where it must not fire", a))
		}
	}
	return problems
}

// Promtool returns the path of promtool: $PROMTOOL, or promtool on $PATH
// (Debian's prometheus package; .ci/promtool ensure installs it).
func Promtool() (string, error) {
	if p := os.Getenv("PROMTOOL"); p != "" {
		return p, nil
	}
	p, err := exec.LookPath("promtool")
	if err != nil {
		return "", errors.New("promtool is not installed: run .ci/promtool ensure (make test does), or set PROMTOOL")
	}
	return p, nil
}

// PromtoolCheckRules runs `promtool check rules` on a rule file.
func PromtoolCheckRules(promtool, file string) error {
	return runPromtool(promtool, filepath.Dir(file), "check", "rules", filepath.Base(file))
}

// PromtoolTestRules runs `promtool test rules` on a unit-test file.
func PromtoolTestRules(promtool, file string) error {
	return runPromtool(promtool, filepath.Dir(file), "test", "rules", filepath.Base(file))
}

func runPromtool(promtool, dir string, args ...string) error {
	cmd := exec.Command(promtool, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// PromtoolCheckQueries checks queries with promtool by writing each as a
// recording rule into a rule file in dir and running `promtool check
// rules` on it. promtool's errors name the rule; the error returned adds
// which query each named rule is.
func PromtoolCheckQueries(promtool, dir string, queries []Query) error {
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	where := map[string]string{}
	for i, q := range queries {
		name := fmt.Sprintf("query_%03d", i+1)
		rules = append(rules, rule{name, q.Expr})
		where[name] = q.Where
	}
	data, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "queries", "rules": rules}}})
	if err != nil {
		return err
	}
	file := filepath.Join(dir, "queries.rules.yaml")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return err
	}
	err = PromtoolCheckRules(promtool, file)
	if err == nil {
		return nil
	}
	var named []string
	for _, name := range queryRuleRE.FindAllString(err.Error(), -1) {
		if w := name + " is " + where[name]; !slices.Contains(named, w) {
			named = append(named, w)
		}
	}
	return fmt.Errorf("%v\n%s", err, strings.Join(named, "\n"))
}

var queryRuleRE = regexp.MustCompile(`query_[0-9]{3}`)

// CheckMonitoring checks the monitoring directory dir: the dashboard's
// structure, every query of the dashboard and the rules against
// metrics.txt and by promtool, the alerts' labels, annotations and runbook
// sections, `promtool check rules` and `promtool test rules`, and the
// unit tests' coverage. It returns the problems found; tmp is a scratch
// directory.
func CheckMonitoring(dir, promtool, tmp string) []string {
	var problems []string
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			problems = append(problems, err.Error())
		}
		return b
	}
	specs, err := ReadMetricList(filepath.Join(dir, MetricListFile))
	if err != nil {
		return []string{err.Error()}
	}
	series := SeriesNames(specs)

	dq, _, ps := DashboardQueries(read(DashboardFile))
	for _, p := range ps {
		problems = append(problems, DashboardFile+": "+p)
	}
	rules, err := ReadRules(read(AlertsFile))
	if err != nil {
		problems = append(problems, AlertsFile+": "+err.Error())
	}
	rq, ps := RuleQueries(rules, read(MonitoringDocs))
	for _, p := range ps {
		problems = append(problems, AlertsFile+": "+p)
	}
	for _, set := range []struct {
		file    string
		queries []Query
	}{{DashboardFile, dq}, {AlertsFile, rq}} {
		for _, q := range set.queries {
			_, ps := CheckQuery(q, series)
			for _, p := range ps {
				problems = append(problems, set.file+": "+p)
			}
		}
	}
	if len(dq) > 0 {
		if err := PromtoolCheckQueries(promtool, tmp, dq); err != nil {
			problems = append(problems, DashboardFile+": "+err.Error())
		}
	}
	if err := PromtoolCheckRules(promtool, filepath.Join(dir, AlertsFile)); err != nil {
		problems = append(problems, err.Error())
	}
	var alerts []string
	for _, r := range rules {
		if r.Alert != "" && !slices.Contains(alerts, r.Alert) {
			alerts = append(alerts, r.Alert)
		}
	}
	sort.Strings(alerts)
	for _, p := range RuleTestCoverage(read(AlertTestsFile), AlertsFile, alerts, series) {
		problems = append(problems, AlertTestsFile+": "+p)
	}
	if err := unitTests(promtool, dir); err != nil {
		problems = append(problems, err.Error())
	}
	return problems
}

// unitTested holds the outcome of `promtool test rules` by the content of
// the rule and test files: the unit tests take seconds, and the broken
// copies of the tests leave most of them as they are.
var unitTested sync.Map // sha256 of promtool, rules and tests → error

func unitTests(promtool, dir string) error {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00", promtool)
	for _, f := range []string{AlertsFile, AlertTestsFile} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%d\x00%s", len(data), data)
	}
	key := string(h.Sum(nil))
	if err, ok := unitTested.Load(key); ok {
		if err == nil {
			return nil
		}
		return err.(error)
	}
	err := PromtoolTestRules(promtool, filepath.Join(dir, AlertTestsFile))
	unitTested.Store(key, err)
	return err
}

// jget walks decoded JSON or YAML by object keys (string) and array indexes (int);
// nil when something on the way is missing.
func jget(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k < 0 || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func jstr(v any, path ...any) string {
	s, _ := jget(v, path...).(string)
	return s
}

func jlist(v any, path ...any) []any {
	l, _ := jget(v, path...).([]any)
	return l
}

// jint is an integer field (JSON numbers decode as float64).
func jint(v any, path ...any) (int64, bool) {
	n, ok := jget(v, path...).(float64)
	return int64(n), ok && n == float64(int64(n))
}
