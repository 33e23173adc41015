package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// usage is what the kernel accounted to a finished child process.
type usage struct {
	Wall   time.Duration
	CPU    time.Duration // user + system
	MaxRSS int64         // bytes: the highest VmHWM seen (see watchPeakRSS)
}

// logLine is the part of a firstseen JSON log line the benchmark reads.
type logLine struct {
	Time  time.Time `json:"time"`
	Msg   string    `json:"msg"`
	Epoch uint64    `json:"epoch"`
	Rows  int64     `json:"rows"`
}

// child is a process the benchmark started: firstseen, the Redis design,
// the broker or redis-server. Its standard output and error go to a log
// file; JSON log lines are also handed to onLine.
type child struct {
	name    string
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	usage   usage
	err     error
}

func startChild(name, logPath string, onLine func(logLine), bin string, args ...string) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	peak := watchPeakRSS(cmd.Process.Pid, c.done)
	var scanned sync.WaitGroup
	scanned.Add(1)
	go func() {
		defer scanned.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			b := sc.Bytes()
			logf.Write(b)
			logf.Write([]byte{'\n'})
			if onLine != nil && len(b) > 0 && b[0] == '{' {
				var l logLine
				if json.Unmarshal(b, &l) == nil {
					onLine(l)
				}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		c.err = cmd.Wait()
		c.usage.Wall = time.Since(c.started)
		pw.Close()
		scanned.Wait()
		logf.Close()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			c.usage.CPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
		c.usage.MaxRSS = peak.Load()
		if c.err != nil {
			c.err = fmt.Errorf("%s exited: %w (its log: %s)", name, c.err, logPath)
		}
		close(c.done)
	}()
	return c, nil
}

// watchPeakRSS follows the child's peak RSS, VmHWM in /proc/PID/status,
// until done is closed. The kernel's rusage ru_maxrss cannot be used: a
// child started by this (large) process inherits its high-water mark
// through fork and exec. VmHWM belongs to the child's own address space,
// and only ever grows, so sampling it every 20 ms misses at most the growth
// of the last 20 ms.
func watchPeakRSS(pid int, done <-chan struct{}) *atomic.Int64 {
	var peak atomic.Int64
	path := fmt.Sprintf("/proc/%d/status", pid)
	sample := func() {
		b, err := os.ReadFile(path)
		if err != nil {
			return
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if err == nil && kb<<10 > peak.Load() {
					peak.Store(kb << 10)
				}
			}
		}
	}
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				sample()
			}
		}
	}()
	return &peak
}

// wait waits for the child to exit, for at most timeout.
func (c *child) wait(timeout time.Duration) (usage, error) {
	select {
	case <-c.done:
		return c.usage, c.err
	case <-time.After(timeout):
		c.kill()
		return c.usage, fmt.Errorf("%s did not finish within %s; killed", c.name, timeout)
	}
}

// signal sends sig; the child's exit is then awaited with wait.
func (c *child) signal(sig syscall.Signal) { _ = c.cmd.Process.Signal(sig) }

func (c *child) kill() {
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// freePort returns a port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitForPort waits until something accepts connections on addr, or the
// child that should listen there has exited.
func waitForPort(ctx context.Context, addr string, c *child) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return nil
		}
		if c.exited() {
			return fmt.Errorf("%s exited before listening on %s: %v", c.name, addr, c.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not listen on %s after 30s", c.name, addr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dirBytes sums the sizes of the regular files directly in dir and in its
// partition-N subdirectories: for a processor's state, each partition's
// Pebble tables, write-ahead log and manifest (published snapshots live in
// deeper subdirectories and are not counted).
func dirBytes(dir string) (int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), "partition-") {
			sub, err := dirBytes(filepath.Join(dir, e.Name()))
			if err != nil {
				return 0, err
			}
			n += sub
			continue
		}
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			return 0, err
		}
		n += fi.Size()
	}
	return n, nil
}

func itoa(n int) string { return strconv.Itoa(n) }

// clockTicks is the unit of /proc/PID/stat times (USER_HZ, 100 on Linux).
const clockTicks = 100

// processCPU is the CPU time the processes named by comm (as in
// /proc/PID/comm, at most 15 characters) or with the given pids have used
// so far: what the services that share the machine with the measured
// process spend per record.
func processCPU(comm string, pids ...int) time.Duration {
	if comm != "" {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); err == nil && strings.TrimSpace(string(b)) == comm {
				pids = append(pids, pid)
			}
		}
	}
	var total time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The command name, in parentheses, may hold spaces: fields count
		// from the last ')'. utime and stime are fields 14 and 15.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * time.Second / clockTicks
	}
	return total
}
