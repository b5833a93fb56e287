package bench

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// BenchmarkTelemetry is the cost of Options.MeterProvider and
// TracerProvider per call, without Redis (the stubbed client of
// BenchmarkOverhead): telemetry=off sets neither (the default),
// telemetry=noop sets OpenTelemetry's no-op providers, telemetry=sdk the
// SDK's, with a manual metric reader and every span sampled and recorded
// in memory. Get and Set make one round trip; Cache (a hit) and
// GetSession are calls that may make several, whose telemetry is an
// operation scope around their round trips. It needs no redis-server.
func BenchmarkTelemetry(b *testing.B) {
	for _, tel := range []struct {
		name string
		set  func(b *testing.B, o *redisservice.Options)
	}{
		{"off", func(*testing.B, *redisservice.Options) {}},
		{"noop", func(_ *testing.B, o *redisservice.Options) {
			o.MeterProvider, o.TracerProvider = metricnoop.NewMeterProvider(), tracenoop.NewTracerProvider()
		}},
		{"sdk", func(b *testing.B, o *redisservice.Options) {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			// A recorder keeps every span: drop them now and then so that
			// memory stays flat over a long run.
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(&droppingRecorder{}))
			b.Cleanup(func() {
				_ = mp.Shutdown(context.Background())
				_ = tp.Shutdown(context.Background())
			})
			o.MeterProvider, o.TracerProvider = mp, tp
		}},
	} {
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true})
		rdb.AddHook(stub{})
		b.Cleanup(func() { _ = rdb.Close() })
		opts := redisservice.Options{Client: rdb}
		tel.set(b, &opts)
		s, err := redisservice.New(opts)
		require.NoError(b, err)
		b.Cleanup(func() { _ = s.Close() })
		for _, op := range []struct {
			name string
			fn   func(ctx context.Context) error
		}{
			{"get", func(ctx context.Context) error {
				_, found, err := s.Get(ctx, "k")
				if err == nil && !found {
					err = fmt.Errorf("Get: not found")
				}
				return err
			}},
			{"set", func(ctx context.Context) error {
				_, err := s.Set(ctx, "k", value64, redisservice.WithTTL(time.Minute))
				return err
			}},
			{"cache", func(ctx context.Context) error { // a hit
				v, err := redisservice.Cache(ctx, s, "json:k", time.Minute, missed)
				if err == nil && v != value64 {
					err = fmt.Errorf("Cache: %q", v)
				}
				return err
			}},
			{"getsession", func(ctx context.Context) error {
				_, found, err := s.GetSession(ctx, "sid")
				if err == nil && !found {
					err = fmt.Errorf("GetSession: not found")
				}
				return err
			}},
		} {
			b.Run(fmt.Sprintf("op=%s/telemetry=%s", op.name, tel.name), func(b *testing.B) {
				ctx := context.Background()
				runCallers(b, 1, func(int) error { return op.fn(ctx) })
			})
		}
	}
}

// missed is the loader of a Cache call that must hit.
func missed(context.Context) (string, error) { return "", errors.New("Cache: missed") }

// droppingRecorder is a tracetest.SpanRecorder that forgets its spans
// every 4096 of them.
type droppingRecorder struct {
	tracetest.SpanRecorder
	n int
}

func (r *droppingRecorder) OnEnd(s sdktrace.ReadOnlySpan) {
	if r.n++; r.n%4096 == 0 {
		r.SpanRecorder = tracetest.SpanRecorder{}
	}
	r.SpanRecorder.OnEnd(s)
}
