package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// report is the outcome of all runs.
type report struct {
	Machine  string      `json:"machine"`
	Date     string      `json:"date"`
	Command  string      `json:"command"`
	Workload string      `json:"workload"`
	Runs     []runResult `json:"runs"`
	interval time.Duration
}

func newReport(b *bench, runs []runResult) *report {
	return &report{
		Machine: machine(), Date: time.Now().UTC().Format("2006-01-02 15:04 MST"),
		Command: "firstseen-bench " + strings.Join(os.Args[1:], " "),
		Workload: fmt.Sprintf("%d records (%d rows) of %d users over %d days, %d partitions, seed %d",
			len(b.recs), b.exp.rows, b.exp.users, b.o.days, b.o.partitions, b.o.seed),
		Runs: runs, interval: b.o.latencyInterval,
	}
}

// series is one measured quantity over the runs.
type series struct {
	name, unit string
	values     []float64
}

func (s series) median() float64 {
	v := append([]float64(nil), s.values...)
	sort.Float64s(v)
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func (r *report) series(name, unit string, get func(runResult) (float64, bool)) series {
	s := series{name: name, unit: unit}
	for _, run := range r.Runs {
		if v, ok := get(run); ok {
			s.values = append(s.values, v)
		}
	}
	return s
}

// measured lists every quantity the report shows.
func (r *report) measured() []series {
	fs := func(f func(*processResult) float64) func(runResult) (float64, bool) {
		return func(x runResult) (float64, bool) {
			if x.Firstseen == nil {
				return 0, false
			}
			return f(x.Firstseen), true
		}
	}
	rd := func(f func(*redisResult) float64) func(runResult) (float64, bool) {
		return func(x runResult) (float64, bool) {
			if x.Redis == nil {
				return 0, false
			}
			return f(x.Redis), true
		}
	}
	lat := func(f func(*latencyResult) float64) func(runResult) (float64, bool) {
		return func(x runResult) (float64, bool) {
			if x.Latency == nil {
				return 0, false
			}
			return f(x.Latency), true
		}
	}
	sc := func(f func(*scaleResult) float64) func(runResult) (float64, bool) {
		return func(x runResult) (float64, bool) {
			if x.Scale == nil {
				return 0, false
			}
			return f(x.Scale), true
		}
	}
	return []series{
		r.series("firstseen throughput", "records/s", fs(func(p *processResult) float64 { return p.RecordsPerSec })),
		r.series("firstseen CPU per record", "µs", fs(func(p *processResult) float64 { return p.CPUPerMRecords })),
		r.series("firstseen peak RSS (workload's users)", "MiB", fs(func(p *processResult) float64 { return p.PeakRSSMiB })),
		r.series("firstseen state on disk (workload's users)", "bytes/user", fs(func(p *processResult) float64 { return p.BytesPerUser })),
		r.series("firstseen wrong rows", "rows", fs(func(p *processResult) float64 { return float64(p.Check.Wrong()) })),
		r.series("broker CPU per record (firstseen phase)", "µs", fs(func(p *processResult) float64 { return p.BrokerCPUPerMRecords })),
		r.series("ClickHouse CPU per record (firstseen phase)", "µs", fs(func(p *processResult) float64 { return p.ClickHouseCPUPerMRecords })),
		r.series("Redis design throughput", "records/s", rd(func(p *redisResult) float64 { return p.RecordsPerSec })),
		r.series("Redis design CPU per record (its process)", "µs", rd(func(p *redisResult) float64 { return p.CPUPerMRecords })),
		r.series("broker CPU per record (Redis design phase)", "µs", rd(func(p *redisResult) float64 { return p.BrokerCPUPerMRecords })),
		r.series("ClickHouse CPU per record (Redis design phase)", "µs", rd(func(p *redisResult) float64 { return p.ClickHouseCPUPerMRecords })),
		r.series("redis-server CPU per record", "µs", rd(func(p *redisResult) float64 { return p.RedisCPUPerMRecords })),
		r.series("Redis memory", "bytes/user", rd(func(p *redisResult) float64 { return p.RedisPerUser })),
		r.series("Redis design wrong rows", "rows", rd(func(p *redisResult) float64 { return float64(p.Check.Wrong()) })),
		r.series("Redis design rows with a wrong is_new", "rows", rd(func(p *redisResult) float64 { return float64(p.Check.WrongIsNew) })),
		r.series("throughput ratio firstseen / Redis design", "×", func(x runResult) (float64, bool) {
			if x.Firstseen == nil || x.Redis == nil {
				return 0, false
			}
			return x.Firstseen.RecordsPerSec / x.Redis.RecordsPerSec, true
		}),
		r.series("latency phase rate", "records/s", lat(func(l *latencyResult) float64 { return l.RecordsPerSec })),
		r.series("latency not waited p50", "ms", lat(func(l *latencyResult) float64 { return l.NotWaited.P50Ms })),
		r.series("latency not waited p99", "ms", lat(func(l *latencyResult) float64 { return l.NotWaited.P99Ms })),
		r.series("latency waited p50", "ms", lat(func(l *latencyResult) float64 { return l.Waited.P50Ms })),
		r.series("latency waited p99", "ms", lat(func(l *latencyResult) float64 { return l.Waited.P99Ms })),
		r.series("scale: users in state", "users", sc(func(s *scaleResult) float64 { return float64(s.UsersInState) })),
		r.series("scale: peak RSS", "MiB", sc(func(s *scaleResult) float64 { return s.PeakRSSMiB })),
		r.series("scale: state on disk", "bytes/user", sc(func(s *scaleResult) float64 { return s.BytesPerUser })),
		r.series("scale: restart to processing", "s", sc(func(s *scaleResult) float64 { return s.RestartReadySeconds })),
		r.series("scale: restart to first output", "s", sc(func(s *scaleResult) float64 { return s.RestartFirstOutput })),
		r.series("scale: wrong rows", "rows", sc(func(s *scaleResult) float64 { return float64(s.Check.Wrong()) })),
	}
}

func (r *report) find(name string) (series, bool) {
	for _, s := range r.measured() {
		if s.name == name && len(s.values) > 0 {
			return s, true
		}
	}
	return series{}, false
}

// target is one row of the target table.
type target struct {
	what, goal, measured string
	met                  string // "yes", "no" or "-"
}

func (r *report) targets() []target {
	var ts []target
	verdict := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "no"
	}
	if ratio, ok := r.find("throughput ratio firstseen / Redis design"); ok {
		fw, _ := r.find("firstseen wrong rows")
		rw, _ := r.find("Redis design wrong rows")
		ts = append(ts, target{"end-to-end throughput", "≥ 3× the Redis design, 0 wrong rows",
			fmt.Sprintf("%.2f× (firstseen %.0f wrong rows, Redis design %.0f)", ratio.median(), fw.median(), rw.median()),
			verdict(ratio.median() >= 3 && fw.median() == 0)})
	}
	if s, ok := r.find("firstseen CPU per record"); ok {
		ts = append(ts, target{"firstseen CPU per record", "≤ 2 µs", fmt.Sprintf("%.2f µs", s.median()), verdict(s.median() <= 2)})
	}
	ts = append(ts, target{"allocations per record on the hot path", "0",
		"proven by TestPerRecordPathDoesNotAllocate (make test)", "-"})
	if s, ok := r.find("scale: peak RSS"); ok {
		u, _ := r.find("scale: users in state")
		ts = append(ts, target{fmt.Sprintf("peak RSS with %s users in state", millions(u.median())), "≤ 512 MiB",
			fmt.Sprintf("%.0f MiB", s.median()), verdict(s.median() <= 512)})
	}
	if s, ok := r.find("scale: state on disk"); ok {
		u, _ := r.find("scale: users in state")
		ts = append(ts, target{fmt.Sprintf("state on disk at %s users", millions(u.median())), "≤ 32 bytes/user",
			fmt.Sprintf("%.1f bytes/user", s.median()), verdict(s.median() <= 32)})
	}
	if s, ok := r.find("latency not waited p99"); ok {
		limit := float64(time.Second+r.interval) / 1e6
		ts = append(ts, target{"p99 latency of records that do not wait, at half the maximum throughput",
			fmt.Sprintf("≤ 1 s + checkpoint interval (%s) = %.0f ms", r.interval, limit),
			fmt.Sprintf("%.0f ms", s.median()), verdict(s.median() <= limit)})
	}
	if s, ok := r.find("scale: restart to first output"); ok {
		u, _ := r.find("scale: users in state")
		ts = append(ts, target{fmt.Sprintf("restart with %s users in state: first output", millions(u.median())), "≤ 5 s",
			fmt.Sprintf("%.2f s", s.median()), verdict(s.median() > 0 && s.median() <= 5)})
	}
	return ts
}

// markdown is the report as results.md.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Machine: %s. Date: %s.\n\nCommand: `%s`\n\nWorkload: %s.\n\n", r.Machine, r.Date, r.Command, r.Workload)
	fmt.Fprintf(&b, "### Targets (medians of %d runs)\n\n| what | target | measured | met |\n| --- | --- | --- | --- |\n", len(r.Runs))
	for _, t := range r.targets() {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.what, t.goal, t.measured, t.met)
	}
	fmt.Fprintf(&b, "\n### Every measurement\n\n| quantity | unit | median |")
	for _, run := range r.Runs {
		fmt.Fprintf(&b, " run %d |", run.Run)
	}
	b.WriteString("\n| --- | --- | --- |" + strings.Repeat(" --- |", len(r.Runs)) + "\n")
	for _, s := range r.measured() {
		if len(s.values) == 0 {
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s |", s.name, s.unit, num(s.median()))
		for _, v := range s.values {
			fmt.Fprintf(&b, " %s |", num(v))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// write prints the targets table and writes results.json, results.md and
// the charts to dir.
func (r *report) write(out io.Writer, dir string) error {
	md := r.markdown()
	fmt.Fprintf(out, "\n%s\n", md)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	if err := r.charts(dir); err != nil {
		return fmt.Errorf("charts: %w", err)
	}
	fmt.Fprintf(out, "wrote results.md, results.json, throughput.png and latency.png to %s\n", dir)
	return nil
}

func millions(n float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", n/1e6), "0"), ".") + "M"
}

func numCPU() int { return runtime.NumCPU() }
