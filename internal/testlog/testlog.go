package redisservice

// go-redis logs failed dials and pool trouble through one logger for the
// whole process, to stderr by default, and a Service without
// Options.Logger logs its failed calls to slog.Default(): the tests that
// stop servers would fill every run's output with "connection refused".
// TestMain installs heldLogs as both instead, which keeps the lines; a
// failing test prints those logged while it ran (a line does not say whose
// client logged it, so they may come from a test running beside it). The
// helpers that make clients, servers or ports for a test (newBackend,
// newService, freePort, closedPort, stalledServer, ctxT) arrange that.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// heldLogKeep is how many of the latest lines are kept, at least half as
// many.
const heldLogKeep = 2000

var heldLogs = &heldLog{}

// heldLog is a go-redis logger (for redis.SetLogger) and a writer (for
// a slog handler) that keeps the latest heldLogKeep lines in memory. It is
// safe for concurrent use.
type heldLog struct {
	mu      sync.Mutex // guards the fields below
	lines   []heldLine
	next    uint64   // sequence number of the next line
	showing sync.Map // testing.TB -> struct{}: tests that print the lines if they fail
}

type heldLine struct {
	seq  uint64
	text string
}

// Printf keeps one line of go-redis. It implements go-redis's logging
// interface.
func (l *heldLog) Printf(_ context.Context, format string, v ...any) {
	l.keep(time.Now().Format("15:04:05.000000") + " go-redis: " + fmt.Sprintf(format, v...))
}

// Write keeps the lines of p, as a slog handler writes them.
func (l *heldLog) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		l.keep(line)
	}
	return len(p), nil
}

func (l *heldLog) keep(text string) {
	text = strings.TrimRight(text, "\n")
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == heldLogKeep { // drop the older half
		l.lines = append(l.lines[:0], l.lines[heldLogKeep/2:]...)
	}
	l.lines = append(l.lines, heldLine{seq: l.next, text: text})
	l.next++
}

// mark returns the sequence number of the next line.
func (l *heldLog) mark() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next
}

// since returns the kept lines from sequence number from on, and how many
// lines from on are no longer kept.
func (l *heldLog) since(from uint64) (lines []string, lost uint64) {
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

// showOnFailure makes t print, if it fails, the lines logged from
// now until t ends. Calling it again for the same t does nothing more.
func (l *heldLog) showOnFailure(t testing.TB) {
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
