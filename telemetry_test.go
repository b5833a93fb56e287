package redisservice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// TestTelemetryOnlyWithAProvider: without a provider the Service has no
// telemetry at all, so a call takes the path it took before; with either
// provider it has. The SDK-based tests are in internal/oteltest.
func TestTelemetryOnlyWithAProvider(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts Options
		want bool
	}{
		{"none", Options{}, false},
		{"meter", Options{MeterProvider: metricnoop.NewMeterProvider()}, true},
		{"tracer", Options{TracerProvider: tracenoop.NewTracerProvider()}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.URL = "redis://127.0.0.1:1"
			s, err := New(tc.opts)
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			assert.Equal(t, tc.want, s.tel != nil, "telemetry")
		})
	}
}

// TestOutcomeOf classifies call's results.
func TestOutcomeOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, outcomeOK},
		{redis.Nil, outcomeMiss},
		{invalid("get", "k", ErrClosed), outcomeFallback},
		{invalid("get", "k", ErrUnavailable), outcomeFallback},
		{invalid("get", "k", ErrDecode), outcomeError},
	} {
		assert.Equal(t, tc.want, outcomeOf(tc.err), "outcomeOf(%v)", tc.err)
	}
}

// TestRedact: a status description keeps no key of the call errors it
// quotes, however they are wrapped or joined.
func TestRedact(t *testing.T) {
	t.Parallel()
	a := wrapOp("destroyusersessions", "user-sessions:ada@example.com", io.ErrUnexpectedEOF)
	b := wrapOp("destroyusersessions", "session:*", ErrUnavailable)
	for _, err := range []error{a, errors.Join(a, b), fmt.Errorf("walk: %w", a), wrapOp("cache", "k", &loadError{a})} {
		got := redact(err)
		assert.NotContains(t, got, "ada@example.com", "%v", err)
		assert.NotContains(t, got, "session:*", "%v", err)
		assert.Contains(t, got, "unexpected EOF", "%v", err)
	}
	assert.Equal(t, "unexpected EOF\nredis unavailable", redact(errors.Join(a, b)))
}

// TestLogsCarryNoKey: a failure's log line names no key, neither as an
// attribute nor through a Redis reply that echoes its arguments, unless
// Options.TraceKeys; the error returned still names it.
func TestLogsCarryNoKey(t *testing.T) {
	t.Parallel()
	const email = "ada@example.com"
	fail := func(t *testing.T, s *Service) {
		t.Helper()
		ctx := ctxT(t)
		require.NoError(t, s.HSet(ctx, email, "f", "v"))
		_, _, err := s.Get(ctx, email) // WRONGTYPE
		require.Error(t, err)
		assert.Contains(t, err.Error(), email, "the error names the key")
		err = s.Run(ctx, "echo", email, func(ctx context.Context, rdb redis.UniversalClient) error {
			return rdb.Do(ctx, "NOSUCHCOMMAND", s.Key(email)).Err() // the reply quotes the key
		})
		require.Error(t, err)
		assert.Contains(t, err.Error(), email, "the error names the key")
	}
	forEachBackend(t, func(t *testing.T, b *backend) {
		var quiet, traced syncBuffer
		fail(t, b.service(t, Options{Logger: jsonLogger(&quiet)}))
		fail(t, b.service(t, Options{Logger: jsonLogger(&traced), TraceKeys: true}))

		lines := quiet.lines(t)
		require.Len(t, lines, 2, "a line per failed call")
		for _, l := range lines {
			assert.NotContains(t, fmt.Sprint(l), email, "log line %v", l)
			assert.NotContains(t, l, "key")
		}
		assert.Equal(t, "WRONGTYPE", lines[0]["error"])
		assert.Equal(t, "ERR", lines[1]["error"])

		lines = traced.lines(t)
		require.Len(t, lines, 2)
		for _, l := range lines {
			assert.Equal(t, email, l["key"], "with TraceKeys")
		}
		assert.Contains(t, lines[1]["error"], email, "with TraceKeys, the reply as it is")
	})
}

// replyError is a Redis error reply, as go-redis returns one.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// TestRedactReplies: a Redis error reply is reduced to its code, wherever
// it sits in the chain: its text may quote keys.
func TestRedactReplies(t *testing.T) {
	t.Parallel()
	echo := replyError("ERR unknown command 'X', with args beginning with: 'ada@example.com'")
	for _, err := range []error{echo, wrapOp("run", "ada@example.com", echo), fmt.Errorf("%w: %w", context.DeadlineExceeded, echo),
		errors.Join(io.EOF, wrapOp("get", "k", echo))} {
		got := redact(err)
		assert.NotContains(t, got, "ada@example.com", "redact(%v)", err)
		assert.Contains(t, got, "ERR", "redact(%v)", err)
		assert.Equal(t, err.Error(), describeErr(err, true), "with TraceKeys")
	}
}
