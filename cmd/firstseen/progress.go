package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows how far a long command (bootstrap, produce) is. On a
// terminal it is a bar with rate and ETA (schollz/progressbar: maintained,
// dependency-light, and it draws rate and ETA the way people expect); when
// the output is not a terminal it logs a plain line every few seconds, so
// that logs of scheduled jobs stay readable.
type progress struct {
	bar   *progressbar.ProgressBar
	log   *slog.Logger
	what  string
	total int64
	done  atomic.Int64
	start time.Time
	last  time.Time
	every time.Duration
}

// newProgress tracks total units of work (bytes of input, usually); total
// <= 0 means unknown. Output goes to w when it is a terminal, to log
// otherwise.
func newProgress(w io.Writer, log *slog.Logger, what string, total int64) *progress {
	p := &progress{log: log, what: what, total: total, start: time.Now(), last: time.Now(), every: 5 * time.Second}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(what),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

// Add records n more units done. It is for one goroutine.
func (p *progress) Add(n int64) {
	done := p.done.Add(n)
	if p.bar != nil {
		p.bar.Add64(n)
		return
	}
	if now := time.Now(); now.Sub(p.last) >= p.every {
		p.last = now
		rate := float64(done) / now.Sub(p.start).Seconds()
		if p.total > 0 {
			p.log.Info(p.what, "done", fmt.Sprintf("%.1f%%", 100*float64(done)/float64(p.total)),
				"rate_per_sec", int64(rate), "eta", time.Duration(float64(p.total-done)/rate*float64(time.Second)).Round(time.Second))
		} else {
			p.log.Info(p.what, "done", done, "rate_per_sec", int64(rate))
		}
	}
}

// Finish ends the display.
func (p *progress) Finish() {
	if p.bar != nil {
		p.bar.Finish()
	}
}
