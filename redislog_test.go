package redisservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writes of loggers.
type syncBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the JSON log lines written so far.
func (b *syncBuffer) lines(t testing.TB) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		out = append(out, m)
	}
	return out
}

func jsonLogger(b *syncBuffer) *slog.Logger { return slog.New(slog.NewJSONHandler(b, nil)) }

// TestSlogLogger: lines arrive formatted at Warn, at most one a second per
// format, with the held-back count on the next one, and no URL password.
func TestSlogLogger(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	rl := SlogLogger(jsonLogger(&buf))
	const dial = "redis: connection pool: failed to dial after %d attempts: %v"
	for range 5 {
		rl.Printf(context.Background(), dial, 1, errors.New("connection refused"))
	}
	rl.Printf(context.Background(), "sentinel: new master=%q addr=%q", "m", "rediss://app:hunter2@10.0.0.1:6379")

	lines := buf.lines(t)
	require.Len(t, lines, 2, "5 dial lines in a burst let one through, plus the other kind")
	assert.Equal(t, "redis: connection pool: failed to dial after 1 attempts: connection refused", lines[0]["msg"])
	assert.Equal(t, "WARN", lines[0]["level"])
	assert.Equal(t, "go-redis", lines[0]["logger"])
	assert.EqualValues(t, 0, lines[0]["suppressed"])
	assert.Equal(t, `sentinel: new master="m" addr="rediss://xxxxx@10.0.0.1:6379"`, lines[1]["msg"])
	assert.NotContains(t, fmt.Sprint(lines), "hunter2")

	time.Sleep(1100 * time.Millisecond) // the gate lets the next line through a second later
	rl.Printf(context.Background(), dial, 2, errors.New("connection refused"))
	lines = buf.lines(t)
	require.Len(t, lines, 3)
	assert.EqualValues(t, 4, lines[2]["suppressed"], "lines held back since the last one")
}

// TestSlogLoggerNil writes to slog.Default() as it is at the time of the line.
func TestSlogLoggerNil(t *testing.T) {
	var buf syncBuffer
	prev := slog.Default()
	t.Cleanup(func() { slog.SetDefault(prev) })
	rl := SlogLogger(nil)
	slog.SetDefault(jsonLogger(&buf))
	rl.Printf(context.Background(), "hello %s", "there")
	lines := buf.lines(t)
	require.Len(t, lines, 1)
	assert.Equal(t, "hello there", lines[0]["msg"])
}

// TestSlogLoggerInGoRedis installs the adapter with redis.SetLogger: a
// client that cannot dial logs through slog, once, not to stderr per try.
func TestSlogLoggerInGoRedis(t *testing.T) {
	var buf syncBuffer
	redis.SetLogger(SlogLogger(jsonLogger(&buf)))
	t.Cleanup(func() { redis.SetLogger(heldLogs) }) // what TestMain installed

	addr := closedPort(t)
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: 3, DialerRetries: 1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	for range 5 {
		require.Error(t, c.Ping(ctxT(t)).Err())
	}
	// Other tests' clients may log too: count this client's lines.
	var ours []string
	for _, l := range buf.lines(t) {
		if msg := fmt.Sprint(l["msg"]); strings.Contains(msg, addr) {
			ours = append(ours, msg)
		}
	}
	require.Len(t, ours, 1, "a burst of failed dials logs one line")
	assert.Contains(t, ours[0], "failed to dial")
}

// maskedLine is what SlogLogger logs for one line holding url.
func maskedLine(t testing.TB, url string) string {
	t.Helper()
	var buf syncBuffer
	SlogLogger(jsonLogger(&buf)).Printf(context.Background(), "dial %s: connection refused", url)
	lines := buf.lines(t)
	require.Len(t, lines, 1)
	return fmt.Sprint(lines[0]["msg"])
}

// TestSlogLoggerMasksTheWholePassword: the user-info runs to the last @
// before the host, whatever the password holds.
func TestSlogLoggerMasksTheWholePassword(t *testing.T) {
	t.Parallel()
	for name, pw := range map[string]string{
		"plain":     "hunter2",
		"at":        "p@ss@word",
		"slash":     "pa/ss/word",
		"space":     "pass word",
		"all":       "a@b/c d?e#f:g",
		"scheme":    "x://y@z",
		"newline":   "line\nbreak",
		"empty":     "",
		"non-ascii": "пароль@ü",
	} {
		t.Run(name, func(t *testing.T) {
			got := maskedLine(t, "rediss://app:"+pw+"@10.0.0.1:6379/2")
			assert.Equal(t, "dial rediss://xxxxx@10.0.0.1:6379/2: connection refused", got)
		})
	}
	t.Run("no user-info", func(t *testing.T) {
		assert.Equal(t, "dial redis://10.0.0.1:6379: connection refused", maskedLine(t, "redis://10.0.0.1:6379"))
	})
}

func FuzzSlogLoggerMasksThePassword(f *testing.F) {
	for _, pw := range []string{"hunter2", "p@ss", "a/b", "a b", "@/ @", "x://y@z"} {
		f.Add("app", pw)
	}
	f.Fuzz(func(t *testing.T, user, pw string) {
		got := maskedLine(t, "redis://"+user+":"+pw+"@host:6379/0")
		want := "dial redis://xxxxx@host:6379/0: connection refused"
		require.False(t, got != want, "Printf(%q, %q) logged %q; want %q", user, pw, got, want)
	})
}
