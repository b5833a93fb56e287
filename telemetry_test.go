package redisservice

import (
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
