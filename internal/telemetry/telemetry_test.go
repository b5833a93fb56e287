package telemetry

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

// keyedError is an error that names a key, as the caller's errors do.
type keyedError struct {
	key string
	err error
}

func (e *keyedError) Error() string { return Prefix + "get " + e.key + ": " + e.err.Error() }
func (e *keyedError) Unwrap() error { return e.err }

func unkeyed(err error) (error, bool) {
	if ke, ok := err.(*keyedError); ok { //nolint:errorlint // the keyed error itself
		return ke.err, true
	}
	return nil, false
}

// replyError is a Redis error reply, as go-redis returns one.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// config is a Config with the providers given and simple classifiers.
func config(traceKeys bool) Config {
	return Config{
		MeterProvider:  metricnoop.NewMeterProvider(),
		TracerProvider: tracenoop.NewTracerProvider(),
		TraceKeys:      traceKeys,
		PoolStats:      func() *redis.PoolStats { return nil },
		Outcome: func(err error) string {
			if err == nil {
				return OutcomeOK
			}
			return OutcomeError
		},
		ErrorType: func(error) string { return "connection" },
		Unkeyed:   unkeyed,
	}
}

// TestNewWithoutProvider: without a provider there is no telemetry, and
// a nil *Telemetry takes every call.
func TestNewWithoutProvider(t *testing.T) {
	tel, err := New(Config{})
	require.NoError(t, err)
	require.Nil(t, tel)
	ctx := context.Background()
	tel.CacheResult(ctx, CacheHit)
	tel.RateLimited(ctx, true, true)
	assert.Equal(t, ctx, tel.Leave(ctx))
	tel.Close()
}

// TestNewWithProviders: with noop providers every instrument is made and
// a call and a scope run through.
func TestNewWithProviders(t *testing.T) {
	tel, err := New(config(false))
	require.NoError(t, err)
	require.NotNil(t, tel)
	defer tel.Close()
	var nilCtx context.Context // a nil ctx is taken
	ctx, c := tel.Start(nilCtx, "get", "k")
	require.NotNil(t, ctx, "a nil ctx becomes Background")
	c.Record(ctx, io.EOF)
	c.End()

	ctx, sc := tel.Begin(context.Background(), "cache", "k")
	require.NotNil(t, sc)
	assert.Same(t, sc, ScopeOf(ctx))
	assert.Nil(t, ScopeOf(tel.Leave(ctx)), "a loader's ctx is out of the scope")
	tel.CacheResult(ctx, CacheMiss)
	assert.Equal(t, CacheMiss, sc.result)
	sc.RoundTrip(sc.start, redis.Nil)
	var err2 error
	sc.End(ctx, &err2)
}

// TestScopeEndRepanics: a panic through End is recorded and goes on.
func TestScopeEndRepanics(t *testing.T) {
	tel, err := New(config(false))
	require.NoError(t, err)
	assert.PanicsWithValue(t, "boom", func() {
		var err error
		ctx, sc := tel.Begin(context.Background(), "op", "k")
		defer sc.End(ctx, &err)
		panic("boom")
	})
}

// scopedNoop is a method's scope without telemetry: Begin and the
// deferred End around nothing.
//
//go:noinline
func scopedNoop(t *Telemetry, ctx context.Context) (err error) {
	ctx, scope := t.Begin(ctx, "op", "k")
	defer scope.End(ctx, &err)
	if ctx == nil {
		return errors.New("nil ctx")
	}
	return nil
}

// TestScopeWithoutTelemetry: without a provider a scope keeps ctx as it
// is and allocates nothing.
func TestScopeWithoutTelemetry(t *testing.T) {
	type testKey struct{}
	ctx := context.WithValue(context.Background(), testKey{}, 1)
	got, scope := (*Telemetry)(nil).Begin(ctx, "op", "k")
	assert.Equal(t, ctx, got, "ctx unwrapped")
	assert.Nil(t, scope)
	assert.Zero(t, testing.AllocsPerRun(1000, func() { _ = scopedNoop(nil, ctx) }), "allocations")
}

// unscopedNoop is scopedNoop without the scope.
//
//go:noinline
func unscopedNoop(ctx context.Context) (err error) {
	if ctx == nil {
		return errors.New("nil ctx")
	}
	return nil
}

// BenchmarkScopeWithoutTelemetry is what the scope of a call of several
// round trips costs without a provider: scope=nil against scope=none,
// the same function without it.
func BenchmarkScopeWithoutTelemetry(b *testing.B) {
	ctx := context.Background()
	b.Run("scope=none", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = unscopedNoop(ctx)
		}
	})
	b.Run("scope=nil", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = scopedNoop(nil, ctx)
		}
	})
}

// TestRedact: the text keeps no key of the keyed errors it quotes,
// however they are wrapped or joined, nor a Redis reply's text.
func TestRedact(t *testing.T) {
	a := &keyedError{"user-sessions:ada@example.com", io.ErrUnexpectedEOF}
	b := &keyedError{"session:*", errors.New(Prefix + "redis unavailable")}
	echo := replyError("ERR unknown command 'X', with args beginning with: 'ada@example.com'")
	for _, err := range []error{a, errors.Join(a, b), fmt.Errorf("walk: %w", a), echo, &keyedError{"k", echo},
		fmt.Errorf("%w: %w", context.DeadlineExceeded, echo)} {
		got := Redact(err, unkeyed)
		assert.NotContains(t, got, "ada@example.com", "%v", err)
		assert.NotContains(t, got, "session:*", "%v", err)
		assert.Equal(t, err.Error(), Describe(err, true, unkeyed), "with TraceKeys")
		assert.Equal(t, got, Describe(err, false, unkeyed), "without TraceKeys")
	}
	assert.Equal(t, "unexpected EOF\nredis unavailable", Redact(errors.Join(a, b), unkeyed))
	assert.Equal(t, "ERR", Redact(&keyedError{"k", echo}, unkeyed))
	assert.Equal(t, "walk: "+a.Error(), Redact(fmt.Errorf("walk: %w", a), nil), "nil unkeyed: only replies")
}

// TestReplyCode: a reply is reduced to its leading code, or "redis error".
func TestReplyCode(t *testing.T) {
	for reply, want := range map[string]string{
		"WRONGTYPE Operation against a key": "WRONGTYPE",
		"NOSCRIPT No matching script.":      "NOSCRIPT",
		"ada@example.com is not allowed":    "redis error",
		"user_script:1: bad":                "redis error",
		"":                                  "redis error",
		"CLUSTERDOWN":                       "CLUSTERDOWN",
	} {
		assert.Equal(t, want, ReplyCode(reply), "ReplyCode(%q)", reply)
	}
}
