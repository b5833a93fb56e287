package oteltest_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// observed is a Service on miniredis with an SDK meter and tracer whose
// output the test reads.
type observed struct {
	mr     *miniredis.Miniredis // nil when opts.URL or opts.Client named a server
	svc    *redisservice.Service
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	mp     *sdkmetric.MeterProvider
}

// newObserved starts miniredis and a Service over it with both providers;
// opts may set more options, and a URL or a Client of its own instead of
// miniredis.
func newObserved(t testing.TB, opts redisservice.Options) *observed {
	t.Helper()
	o := &observed{
		reader: sdkmetric.NewManualReader(),
		spans:  tracetest.NewSpanRecorder(),
	}
	o.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(o.spans))
	o.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(o.reader))
	if opts.URL == "" && opts.Client == nil {
		o.mr = miniredis.RunT(t)
		opts.URL = "redis://" + o.mr.Addr()
	}
	opts.MeterProvider = o.mp
	opts.TracerProvider = o.tp
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
	}
	svc, err := redisservice.New(opts)
	require.NoError(t, err)
	o.svc = svc
	t.Cleanup(func() {
		_ = svc.Close()
		_ = o.mp.Shutdown(context.Background())
		_ = o.tp.Shutdown(context.Background())
	})
	return o
}

// sums returns the value of every data point of the Int64 sum named name,
// by its attributes as "k=v,k=v" (sorted).
func (o *observed) sums(t testing.TB, name string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, o.reader.Collect(context.Background(), &rm))
	out := make(map[string]int64)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					out[attrs(dp.Attributes)] += dp.Value
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					out[attrs(dp.Attributes)] += dp.Value
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					out[attrs(dp.Attributes)] += int64(dp.Count)
				}
			default:
				require.FailNowf(t, "unexpected data", "%s: unexpected data %T", name, m.Data)
			}
		}
	}
	return out
}

func attrs(s attribute.Set) string {
	var kv []string
	for _, a := range s.ToSlice() {
		kv = append(kv, string(a.Key)+"="+a.Value.String())
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func spanAttr(s sdktrace.ReadOnlySpan, key string) (string, bool) {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return a.Value.String(), true
		}
	}
	return "", false
}

// named returns the ended spans called name, in the order they ended.
func (o *observed) named(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range o.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// TestOperationOutcomes: each outcome is counted under its op, each call
// timed and traced, and a failure sets the span's status.
func TestOperationOutcomes(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	_, err := o.svc.Set(ctx, "k", "v")
	require.NoError(t, err)
	_, found, err := o.svc.Get(ctx, "k") // ok
	require.NoError(t, err)
	require.True(t, found)
	_, found, err = o.svc.Get(ctx, "absent") // miss
	require.NoError(t, err)
	require.False(t, found)
	require.NoError(t, o.svc.HSet(ctx, "h", "f", "x"))
	_, _, err = o.svc.Get(ctx, "h") // WRONGTYPE: error
	require.Error(t, err)
	require.NoError(t, o.svc.Close())
	_, _, err = o.svc.Get(ctx, "k") // closed: fallback
	require.ErrorIs(t, err, redisservice.ErrClosed)

	assert.Equal(t, map[string]int64{
		"redisservice.op=set,redisservice.outcome=ok":       1,
		"redisservice.op=hset,redisservice.outcome=ok":      1,
		"redisservice.op=get,redisservice.outcome=ok":       1,
		"redisservice.op=get,redisservice.outcome=miss":     1,
		"redisservice.op=get,redisservice.outcome=error":    1,
		"redisservice.op=get,redisservice.outcome=fallback": 1,
	}, o.sums(t, "redisservice.operations"))
	assert.Equal(t, map[string]int64{
		"redisservice.op=set":  1,
		"redisservice.op=hset": 1,
		"redisservice.op=get":  4,
	}, o.sums(t, "redisservice.operation.duration"), "durations recorded per op")

	gets := o.named("redisservice.get")
	require.Len(t, gets, 4)
	var outcomes []string
	for _, s := range gets {
		sys, _ := spanAttr(s, "db.system.name")
		assert.Equal(t, "redis", sys)
		assert.Equal(t, trace.SpanKindClient, s.SpanKind())
		out, _ := spanAttr(s, "redisservice.outcome")
		outcomes = append(outcomes, out)
		if out == "error" || out == "fallback" {
			assert.Equal(t, codes.Error, s.Status().Code, "status of a %s span", out)
			assert.NotEmpty(t, s.Status().Description)
		} else {
			assert.Equal(t, codes.Unset, s.Status().Code, "status of a %s span", out)
		}
	}
	assert.Equal(t, []string{"ok", "miss", "error", "fallback"}, outcomes)
	et, _ := spanAttr(gets[2], "error.type")
	assert.Equal(t, "redis", et, "error.type of WRONGTYPE")
	assert.Contains(t, gets[2].Status().Description, "WRONGTYPE")
}

// TestSpanParent: a call made under a span of the caller's is its child.
func TestSpanParent(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx, parent := o.tp.Tracer("app").Start(ctxT(t), "handler")
	_, _, err := o.svc.Get(ctx, "k")
	require.NoError(t, err)
	parent.End()
	gets := o.named("redisservice.get")
	require.NotEmpty(t, gets, "no redisservice.get span")
	assert.Equal(t, parent.SpanContext().SpanID(), gets[0].Parent().SpanID())
}

// TestRateLimitDecisions: allowed, denied, then fail_open with Redis gone,
// and fail_closed under Options.RateLimitFailClosed, for each rate limit.
func TestRateLimitDecisions(t *testing.T) {
	t.Parallel()
	for name, call := range map[string]func(ctx context.Context, svc *redisservice.Service) (redisservice.RateLimitResult, error){
		"CheckRateLimit": func(ctx context.Context, svc *redisservice.Service) (redisservice.RateLimitResult, error) {
			return svc.CheckRateLimit(ctx, "ip", time.Minute, 1)
		},
		"AllowN": func(ctx context.Context, svc *redisservice.Service) (redisservice.RateLimitResult, error) {
			return svc.AllowN(ctx, "ip", 1, redisservice.PerHour(1))
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			o := newObserved(t, redisservice.Options{Timeout: 300 * time.Millisecond, MaxRetries: -1})
			// closed shares o's server, which goes before closed's first call.
			closed := newObserved(t, redisservice.Options{URL: "redis://" + o.mr.Addr(), Timeout: 300 * time.Millisecond, MaxRetries: -1, RateLimitFailClosed: true})
			ctx := ctxT(t)
			for _, want := range []bool{true, false} {
				r, err := call(ctx, o.svc)
				require.NoError(t, err)
				require.Equal(t, want, r.Allowed)
			}
			o.mr.Close()
			r, err := call(ctx, o.svc)
			require.Error(t, err)
			require.True(t, r.Allowed, "fails open")
			r, err = call(ctx, closed.svc)
			require.Error(t, err)
			require.False(t, r.Allowed, "fails closed")

			assert.Equal(t, map[string]int64{
				"redisservice.ratelimit.decision=allowed":   1,
				"redisservice.ratelimit.decision=denied":    1,
				"redisservice.ratelimit.decision=fail_open": 1,
			}, o.sums(t, "redisservice.ratelimit.decisions"))
			assert.Equal(t, map[string]int64{
				"redisservice.ratelimit.decision=fail_closed": 1,
			}, closed.sums(t, "redisservice.ratelimit.decisions"))
			assert.Equal(t, int64(1), o.sums(t, "redisservice.operations")["redisservice.op=ratelimit,redisservice.outcome=error"])
		})
	}
}

// TestCacheFallbackWhileDown: once Redis is known down, Cache skips it,
// and that is counted as a fallback of op cache: one per call.
func TestCacheFallbackWhileDown(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{Timeout: 300 * time.Millisecond, MaxRetries: -1})
	ctx := ctxT(t)
	o.mr.Close()
	load := func(context.Context) (string, error) { return "loaded", nil }
	// The first call finds Redis down (and, its read having failed, tries
	// no store); each later call skips Redis once.
	for range 3 {
		v, err := redisservice.Cache(ctx, o.svc, "c", time.Minute, load)
		require.Error(t, err)
		require.Equal(t, "loaded", v)
	}
	ops := o.sums(t, "redisservice.operations")
	assert.Equal(t, int64(1), ops["redisservice.op=cache,redisservice.outcome=error"], "the call that found Redis down: %v", ops)
	assert.Equal(t, int64(2), ops["redisservice.op=cache,redisservice.outcome=fallback"], "the calls that skipped it: %v", ops)
	assert.Len(t, ops, 2, "one count per call: %v", ops)
	assert.Len(t, o.spans.Ended(), 3, "one span per call")
}

// secretKey stands for a key holding personal data.
const secretKey = "user:ada@example.com"

// exercise makes calls with secretKey that end in each outcome.
func exercise(t testing.TB, svc *redisservice.Service) {
	t.Helper()
	ctx := ctxT(t)
	_, err := svc.Set(ctx, secretKey, "v")
	require.NoError(t, err)
	_, _, err = svc.Get(ctx, secretKey)
	require.NoError(t, err)
	_, _, err = svc.Get(ctx, secretKey+":absent")
	require.NoError(t, err)
	require.NoError(t, svc.HSet(ctx, secretKey+":h", "f", "x"))
	_, _, err = svc.Get(ctx, secretKey+":h") // WRONGTYPE: an error whose text names the key
	require.Error(t, err)
	require.Contains(t, err.Error(), secretKey, "the caller's error names the key")
	err = svc.Run(ctx, "echo", secretKey, func(ctx context.Context, rdb redis.UniversalClient) error {
		return rdb.Do(ctx, "NOSUCHCOMMAND", svc.Key(secretKey)).Err() // a reply that quotes the key
	})
	require.Error(t, err)
	require.Contains(t, err.Error(), secretKey, "the caller's error names the key")
	_, err = svc.CheckRateLimit(ctx, secretKey, time.Minute, 5)
	require.NoError(t, err)
	_, err = redisservice.Cache(ctx, svc, secretKey+":c", time.Minute, func(context.Context) (int, error) { return 1, nil })
	require.NoError(t, err)
}

// spanText is everything a span carries as text: name, attributes,
// status, events and their attributes.
func spanText(s sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	fmt.Fprintln(&b, s.Name(), s.Status().Description)
	for _, a := range s.Attributes() {
		fmt.Fprintln(&b, a.Key, a.Value.String())
	}
	for _, e := range s.Events() {
		fmt.Fprintln(&b, e.Name)
		for _, a := range e.Attributes {
			fmt.Fprintln(&b, a.Key, a.Value.String())
		}
	}
	return b.String()
}

// TestNoKeyInTelemetry: by default no span attribute, status or event, and
// no metric attribute, carries a key.
func TestNoKeyInTelemetry(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	exercise(t, o.svc)
	spans := o.spans.Ended()
	require.NotEmpty(t, spans)
	for _, s := range spans {
		txt := spanText(s)
		assert.NotContains(t, txt, "ada@example.com", "span %s", s.Name())
		_, has := spanAttr(s, "redisservice.key")
		assert.False(t, has, "span %s has redisservice.key", s.Name())
	}
	var rm metricdata.ResourceMetrics
	require.NoError(t, o.reader.Collect(context.Background(), &rm))
	assert.NotContains(t, fmt.Sprintf("%+v", rm), "ada@example.com", "metrics")
}

// TestTraceKeys: with Options.TraceKeys the key is on every keyed span.
func TestTraceKeys(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{TraceKeys: true})
	exercise(t, o.svc)
	keyed := map[string]bool{}
	for _, s := range o.spans.Ended() {
		k, has := spanAttr(s, "redisservice.key")
		require.True(t, has, "span %s has no redisservice.key", s.Name())
		assert.True(t, strings.HasPrefix(k, secretKey), "span %s: redisservice.key=%q", s.Name(), k)
		keyed[s.Name()] = true
	}
	assert.True(t, keyed["redisservice.get"] && keyed["redisservice.set"] && keyed["redisservice.ratelimit"] && keyed["redisservice.cache"], "spans: %v", keyed)
}

// TestPoolGauges: the pool's connections are observed by state.
func TestPoolGauges(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	_, _, err := o.svc.Get(ctxT(t), "k")
	require.NoError(t, err)
	conns := o.sums(t, "redisservice.pool.connections")
	assert.Equal(t, int64(1), conns["redisservice.pool.state=idle"]+conns["redisservice.pool.state=used"], "connections: %v", conns)
	assert.Contains(t, conns, "redisservice.pool.state=used")
	misses := o.sums(t, "redisservice.pool.misses")
	assert.Equal(t, int64(1), misses[""], "the first call found no free connection")
}

// TestOneProvider: either provider works alone.
func TestOneProvider(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reader := sdkmetric.NewManualReader()
	rec := tracetest.NewSpanRecorder()
	for _, opts := range []redisservice.Options{
		{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))},
		{TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))},
	} {
		opts.URL = "redis://" + mr.Addr()
		svc, err := redisservice.New(opts)
		require.NoError(t, err)
		_, _, err = svc.Get(ctxT(t), "k")
		require.NoError(t, err)
		require.NoError(t, svc.Close())
	}
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	require.Len(t, rm.ScopeMetrics, 1)
	assert.Equal(t, "github.com/vevurn/redisservice", rm.ScopeMetrics[0].Scope.Name)
	require.Len(t, rec.Ended(), 1)
	assert.Equal(t, "github.com/vevurn/redisservice", rec.Ended()[0].InstrumentationScope().Name)
}

// TestFailFastIsFallback: once a call found Redis down, the calls after it
// fail fast with ErrUnavailable: outcome fallback, with a span whose
// error.type is unavailable.
func TestFailFastIsFallback(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{Timeout: 300 * time.Millisecond, MaxRetries: -1})
	ctx := ctxT(t)
	o.mr.Close()
	_, _, err := o.svc.Get(ctx, "k")
	require.Error(t, err)
	_, _, err = o.svc.Get(ctx, "k")
	require.ErrorIs(t, err, redisservice.ErrUnavailable)

	assert.Equal(t, map[string]int64{
		"redisservice.op=get,redisservice.outcome=error":    1,
		"redisservice.op=get,redisservice.outcome=fallback": 1,
	}, o.sums(t, "redisservice.operations"))
	var types []string
	for _, s := range o.named("redisservice.get") {
		et, _ := spanAttr(s, "error.type")
		types = append(types, et)
		assert.Equal(t, codes.Error, s.Status().Code)
	}
	assert.Equal(t, []string{"connection", "unavailable"}, types)
}

// TestTwoServicesOneProvider: Services sharing a provider both report;
// their counts add up under the same attributes.
func TestTwoServicesOneProvider(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	second, err := redisservice.New(redisservice.Options{URL: "redis://" + o.mr.Addr(), MeterProvider: o.mp})
	require.NoError(t, err, "a second Service on the same provider")
	t.Cleanup(func() { _ = second.Close() })
	for _, svc := range []*redisservice.Service{o.svc, second} {
		_, _, err := svc.Get(ctxT(t), "k")
		require.NoError(t, err)
	}
	assert.Equal(t, int64(2), o.sums(t, "redisservice.operations")["redisservice.op=get,redisservice.outcome=miss"])
	conns := o.sums(t, "redisservice.pool.connections")
	assert.Equal(t, int64(2), conns["redisservice.pool.state=idle"]+conns["redisservice.pool.state=used"], "both pools: %v", conns)
}
