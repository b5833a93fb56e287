// Package testlog keeps the lines that go-redis and slog.Default() log
// during a package's tests out of the run's output, unless a test fails.
//
// go-redis logs failed dials and pool trouble through one logger for the
// whole process, to stderr by default, and a redisservice Service without
// Options.Logger logs its failed calls to slog.Default(): the tests that
// stop servers would fill every run's output with "connection refused".
// [Install], called from TestMain, puts a [Log] in both places instead,
// which keeps the latest lines in memory. A test that calls
// [Log.ShowOnFailure] prints, if it fails, the lines logged while it ran
// (a line does not say whose client logged it: they may come from a test
// running beside it); TestMain can print them all with [Log.WriteTo] when
// the run fails.
package testlog

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// keep is how many of the latest lines a Log keeps, at least half as many.
const keep = 2000

// Log is a go-redis logger and a writer for a slog handler that keeps the
// latest lines in memory. It is safe for concurrent use.
type Log struct {
	mu      sync.Mutex // guards lines and next
	lines   []line
	next    uint64   // sequence number of the next line
	showing sync.Map // testing.TB -> struct{}: tests that print the lines if they fail
}

type line struct {
	seq  uint64
	text string
}

// Install makes a Log go-redis's logger (redis.SetLogger) and the writer
// of slog.Default()'s handler, and returns it.
func Install() *Log {
	l := &Log{}
	redis.SetLogger(l)
	slog.SetDefault(slog.New(slog.NewTextHandler(l, nil)))
	return l
}

// Main is a TestMain for a package whose tests need nothing else: it
// installs a Log, runs the tests, writes the held lines to stderr when
// they failed, and exits with their code.
func Main(m *testing.M) {
	logs := Install()
	code := m.Run()
	if code != 0 {
		_, _ = logs.WriteTo(os.Stderr)
	}
	os.Exit(code)
}

// Printf keeps one line of go-redis. It implements go-redis's logging
// interface.
func (l *Log) Printf(_ context.Context, format string, v ...any) {
	l.keep(time.Now().Format("15:04:05.000000") + " go-redis: " + fmt.Sprintf(format, v...))
}

// Write keeps the lines of p, as a slog handler writes them.
func (l *Log) Write(p []byte) (int, error) {
	for _, s := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		l.keep(s)
	}
	return len(p), nil
}

func (l *Log) keep(text string) {
	text = strings.TrimRight(text, "\n")
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == keep { // drop the older half
		l.lines = append(l.lines[:0], l.lines[keep/2:]...)
	}
	l.lines = append(l.lines, line{seq: l.next, text: text})
	l.next++
}

// mark returns the sequence number of the next line.
func (l *Log) mark() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next
}

// since returns the kept lines from sequence number from on, and how many
// lines from on are no longer kept.
func (l *Log) since(from uint64) (lines []string, lost uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ln := range l.lines {
		if ln.seq >= from {
			lines = append(lines, ln.text)
		}
	}
	if len(l.lines) > 0 && l.lines[0].seq > from {
		lost = l.lines[0].seq - from
	}
	return lines, lost
}

// ShowOnFailure makes t print, if it fails, the lines logged from now
// until it ends. Calling it again for the same t does nothing more.
func (l *Log) ShowOnFailure(t testing.TB) {
	if _, dup := l.showing.LoadOrStore(t, struct{}{}); dup {
		return
	}
	from := l.mark()
	t.Cleanup(func() {
		l.showing.Delete(t)
		if !t.Failed() {
			return
		}
		lines, lost := l.since(from)
		if len(lines) == 0 && lost == 0 {
			return
		}
		t.Logf("%d lines logged while this test ran (by go-redis or slog.Default(), for any test's clients; %d more no longer kept):\n\t%s",
			len(lines), lost, strings.Join(lines, "\n\t"))
	})
}

// WriteTo writes every kept line to w.
func (l *Log) WriteTo(w io.Writer) (int64, error) {
	lines, lost := l.since(0)
	if len(lines) == 0 {
		return 0, nil
	}
	n, err := fmt.Fprintf(w, "%d lines logged by go-redis or slog.Default() (%d older ones no longer kept):\n\t%s\n",
		len(lines), lost, strings.Join(lines, "\n\t"))
	return int64(n), err
}
