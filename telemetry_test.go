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

// scopedNoop is a method's scope without telemetry: begin and the
// deferred end around nothing.
//
//go:noinline
func scopedNoop(t *telemetry, ctx context.Context) (err error) {
	ctx, scope := t.begin(ctx, "op", "k")
	defer scope.end(ctx, &err)
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
	got, scope := (*telemetry)(nil).begin(ctx, "op", "k")
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
