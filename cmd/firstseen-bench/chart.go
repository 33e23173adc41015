package main

import (
	"fmt"
	"image/color"
	"path/filepath"
	"sort"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

var (
	firstseenColor = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	redisColor     = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	waitedColor    = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
)

// charts draws throughput.png (records/s of both designs, per run) and
// latency.png (the latency distributions of all runs' latency phases).
func (r *report) charts(dir string) error {
	if err := r.throughputChart(filepath.Join(dir, "throughput.png")); err != nil {
		return err
	}
	return r.latencyChart(filepath.Join(dir, "latency.png"))
}

func (r *report) throughputChart(path string) error {
	p := plot.New()
	p.Title.Text = "End-to-end throughput into ClickHouse (same workload, same machine)"
	p.Y.Label.Text = "records per second"
	p.Y.Min = 0
	var fsVals, rdVals plotter.Values
	var names []string
	for _, run := range r.Runs {
		if run.Firstseen == nil && run.Redis == nil {
			continue
		}
		names = append(names, fmt.Sprintf("run %d", run.Run))
		fsVals = append(fsVals, value(run.Firstseen != nil, func() float64 { return run.Firstseen.RecordsPerSec }))
		rdVals = append(rdVals, value(run.Redis != nil, func() float64 { return run.Redis.RecordsPerSec }))
	}
	if len(names) == 0 {
		return nil
	}
	w := vg.Points(28)
	fsBars, err := plotter.NewBarChart(fsVals, w)
	if err != nil {
		return err
	}
	fsBars.Color, fsBars.LineStyle.Width, fsBars.Offset = firstseenColor, 0, -w/2
	rdBars, err := plotter.NewBarChart(rdVals, w)
	if err != nil {
		return err
	}
	rdBars.Color, rdBars.LineStyle.Width, rdBars.Offset = redisColor, 0, w/2
	p.Add(fsBars, rdBars, plotter.NewGrid())
	p.Legend.Add("firstseen (Pebble state, watermarks)", fsBars)
	p.Legend.Add("Redis hash design (seed)", rdBars)
	p.Legend.Top, p.Legend.Left = true, true
	p.NominalX(names...)
	top := 0.0
	for i := range fsVals {
		top = max(top, fsVals[i], rdVals[i])
	}
	p.Y.Max = top * 1.3 // room for the legend
	p.Y.Tick.Marker = plainTicks{}
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, path)
}

func value(ok bool, f func() float64) float64 {
	if !ok {
		return 0
	}
	return f()
}

func (r *report) latencyChart(path string) error {
	var waited, notWaited []float64
	for _, run := range r.Runs {
		if run.Latency != nil {
			notWaited = append(notWaited, run.Latency.NotWaited.samples...)
			waited = append(waited, run.Latency.Waited.samples...)
		}
	}
	if len(waited)+len(notWaited) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Latency from append to committed row (checkpoint every %s)", r.interval)
	p.X.Label.Text = "milliseconds"
	p.Y.Label.Text = "share of rows with at most this latency"
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	for _, c := range []struct {
		name    string
		samples []float64
		col     color.Color
	}{
		{"decided on arrival", notWaited, firstseenColor},
		{"waited for the watermark", waited, waitedColor},
	} {
		if len(c.samples) == 0 {
			continue
		}
		l, err := plotter.NewLine(cdf(c.samples, 1000))
		if err != nil {
			return err
		}
		l.Color, l.Width = c.col, vg.Points(2)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (%d rows)", c.name, len(c.samples)), l)
	}
	p.Legend.Left, p.Legend.Top = false, false
	p.X.Tick.Marker = plainTicks{}
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, path)
}

// cdf returns at most points points of the empirical distribution.
func cdf(samples []float64, points int) plotter.XYs {
	s := append([]float64(nil), samples...)
	sort.Float64s(s)
	n := len(s)
	step := max(1, n/points)
	xy := make(plotter.XYs, 0, n/step+2)
	for i := 0; i < n; i += step {
		xy = append(xy, plotter.XY{X: s[i], Y: float64(i+1) / float64(n)})
	}
	xy = append(xy, plotter.XY{X: s[n-1], Y: 1})
	return xy
}

// plainTicks are gonum's default ticks labelled without decimals.
type plainTicks struct{}

func (plainTicks) Ticks(min, max float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'f', -1, 64)
		}
	}
	return ts
}
