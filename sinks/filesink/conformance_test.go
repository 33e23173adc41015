package filesink

import (
	"errors"
	"os"
	"sync/atomic"
	"testing"

	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/sinks/sinktest"
)

// TestConformance runs the sink conformance suite on a directory, in both
// formats. Breaking the destination makes fsync fail, so a Write fails
// after it wrote a temporary file and before it renamed it.
func TestConformance(t *testing.T) {
	for _, f := range []Format{JSONL, Parquet} {
		t.Run(string(f), func(t *testing.T) {
			var dir string
			var broken atomic.Bool
			errBroken := errors.New("injected: the disk is failing")
			defer func(sync func(*os.File) error) { syncFile = sync }(syncFile)
			syncFile = func(f *os.File) error {
				if broken.Load() {
					return errBroken
				}
				return f.Sync()
			}
			sinktest.Run(t, sinktest.Harness{
				Reset: func(t *testing.T) { dir = t.TempDir() },
				Open: func(t *testing.T) sinks.Sink {
					s, err := Open(dir, f)
					if err != nil {
						t.Fatal(err)
					}
					return s
				},
				Read: func(t *testing.T) []sinks.Line {
					lines, err := ReadDir(dir)
					if err != nil {
						t.Fatal(err)
					}
					return lines
				},
				Break: func(t *testing.T, _ sinks.Sink) func() {
					broken.Store(true)
					return func() {
						broken.Store(false)
						// The failed write left no temporary file behind.
						checkNoTemps(t, dir)
					}
				},
			})
		})
	}
}
