package redisservice

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// This file holds the OpenTelemetry instrumentation: the instruments and
// span of every call, made only when Options.MeterProvider or
// Options.TracerProvider is set. Without either, Service.tel is nil and a
// call pays one nil check.

// instrumentationName names the Service's meter and tracer.
const instrumentationName = "github.com/vevurn/redisservice"

// Outcomes of a call: the values of the redisservice.outcome attribute.
const (
	outcomeOK       = "ok"       // Redis answered with a value
	outcomeMiss     = "miss"     // Redis answered nil: no such key, NX/XX not met
	outcomeError    = "error"    // the call failed; the caller got its fallback and the error
	outcomeFallback = "fallback" // Redis was not asked: the Service is closed or Redis known down
)

// Results of a Cache call: the values of redisservice.cache.result.
const (
	cacheHit      = "hit"       // decoded from Redis
	cacheLocalHit = "local_hit" // served from the in-process tier
	cacheMiss     = "miss"      // Redis answered, nothing usable: load ran or was shared
	cacheStale    = "stale"     // served past its TTL while a refresh runs
	cacheNotFound = "not_found" // a cached ErrNotFound
)

// Decisions of a rate limit: the values of redisservice.ratelimit.decision.
const (
	decisionAllowed    = "allowed"
	decisionDenied     = "denied"
	decisionFailOpen   = "fail_open"   // Redis gave no answer; allowed (the default)
	decisionFailClosed = "fail_closed" // Redis gave no answer; denied (Options.RateLimitFailClosed)
)

// telemetry holds a Service's instruments and tracer. A nil *telemetry
// records nothing; so does a nil instrument or tracer in it.
type telemetry struct {
	tracer     trace.Tracer // nil without a TracerProvider
	traceKeys  bool         // Options.TraceKeys
	operations metric.Int64Counter
	duration   metric.Float64Histogram
	cache      metric.Int64Counter
	ratelimit  metric.Int64Counter
	pool       metric.Registration // the pool gauges' callback, unregistered by Close

	ops       sync.Map                      // op string -> *opTelemetry
	results   map[string][]metric.AddOption // by cache result; read-only after newTelemetry
	decisions map[string][]metric.AddOption // by rate-limit decision; read-only after newTelemetry
}

// opTelemetry is what one op records with, built once per op so that a
// call allocates nothing for its attributes.
type opTelemetry struct {
	spanName  string
	spanStart []trace.SpanStartOption
	outcomes  map[string][]metric.AddOption   // by outcome
	spanAttrs map[string][]attribute.KeyValue // by outcome
	duration  []metric.RecordOption
}

// newTelemetry returns the telemetry of opts, or nil when neither
// provider is set. rdb feeds the pool gauges.
func newTelemetry(opts Options, rdb redis.UniversalClient) (*telemetry, error) {
	if opts.MeterProvider == nil && opts.TracerProvider == nil {
		return nil, nil
	}
	t := &telemetry{traceKeys: opts.TraceKeys}
	if opts.TracerProvider != nil {
		t.tracer = opts.TracerProvider.Tracer(instrumentationName)
	}
	if opts.MeterProvider == nil {
		return t, nil
	}
	t.results = attributeOptions("redisservice.cache.result", cacheHit, cacheLocalHit, cacheMiss, cacheStale, cacheNotFound)
	t.decisions = attributeOptions("redisservice.ratelimit.decision", decisionAllowed, decisionDenied, decisionFailOpen, decisionFailClosed)
	m := opts.MeterProvider.Meter(instrumentationName)
	var errs [11]error
	var (
		conns                         metric.Int64ObservableUpDownCounter
		hits, misses, timeouts, stale metric.Int64ObservableCounter
		wait                          metric.Float64ObservableCounter
	)
	t.operations, errs[0] = m.Int64Counter("redisservice.operations",
		metric.WithDescription("Calls to Redis by operation and outcome (ok, miss, error, fallback)."),
		metric.WithUnit("{operation}"))
	t.duration, errs[1] = m.Float64Histogram("redisservice.operation.duration",
		metric.WithDescription("Duration of calls to Redis, by operation, fallbacks included."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	t.cache, errs[2] = m.Int64Counter("redisservice.cache.requests",
		metric.WithDescription("Cache calls by result (hit, local_hit, miss, stale, not_found)."),
		metric.WithUnit("{request}"))
	t.ratelimit, errs[3] = m.Int64Counter("redisservice.ratelimit.decisions",
		metric.WithDescription("Rate-limit decisions (allowed, denied, fail_open, fail_closed)."),
		metric.WithUnit("{decision}"))
	// An up-down counter rather than a gauge, as OpenTelemetry's
	// db.client.connection.count: Services sharing a provider then add up
	// their pools instead of the last one hiding the others.
	conns, errs[4] = m.Int64ObservableUpDownCounter("redisservice.pool.connections",
		metric.WithDescription("Connections in the go-redis pool by state (idle, used), summed over the nodes of a cluster."),
		metric.WithUnit("{connection}"))
	hits, errs[5] = m.Int64ObservableCounter("redisservice.pool.hits",
		metric.WithDescription("Times a free connection was found in the pool."))
	misses, errs[6] = m.Int64ObservableCounter("redisservice.pool.misses",
		metric.WithDescription("Times no free connection was found in the pool."))
	timeouts, errs[7] = m.Int64ObservableCounter("redisservice.pool.timeouts",
		metric.WithDescription("Waits for a connection that ran out of PoolTimeout."))
	stale, errs[8] = m.Int64ObservableCounter("redisservice.pool.stale",
		metric.WithDescription("Connections removed from the pool as stale."))
	wait, errs[9] = m.Float64ObservableCounter("redisservice.pool.wait_time",
		metric.WithDescription("Total time spent waiting for a connection."),
		metric.WithUnit("s"))
	idle := metric.WithAttributeSet(attribute.NewSet(attribute.String("redisservice.pool.state", "idle")))
	used := metric.WithAttributeSet(attribute.NewSet(attribute.String("redisservice.pool.state", "used")))
	t.pool, errs[10] = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		ps := rdb.PoolStats()
		if ps == nil {
			return nil
		}
		o.ObserveInt64(conns, int64(ps.IdleConns), idle)
		o.ObserveInt64(conns, int64(ps.TotalConns)-int64(ps.IdleConns), used)
		o.ObserveInt64(hits, int64(ps.Hits))
		o.ObserveInt64(misses, int64(ps.Misses))
		o.ObserveInt64(timeouts, int64(ps.Timeouts))
		o.ObserveInt64(stale, int64(ps.StaleConns))
		o.ObserveFloat64(wait, time.Duration(ps.WaitDurationNs).Seconds())
		return nil
	}, conns, hits, misses, timeouts, stale, wait)
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return t, nil
}

// close unregisters the pool gauges.
func (t *telemetry) close() {
	if t != nil && t.pool != nil {
		_ = t.pool.Unregister()
	}
}

// forOp returns op's span name and attribute sets, built on first use.
// ops are constants of this package (and of callers of Service.Run), so
// the map stays small.
func (t *telemetry) forOp(op string) *opTelemetry {
	if v, ok := t.ops.Load(op); ok {
		return v.(*opTelemetry)
	}
	o := &opTelemetry{
		spanName: "redisservice." + op,
		spanStart: []trace.SpanStartOption{
			trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.String("db.system.name", "redis"), attribute.String("redisservice.op", op)),
		},
		outcomes:  make(map[string][]metric.AddOption, 4),
		spanAttrs: make(map[string][]attribute.KeyValue, 4),
		duration:  []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("redisservice.op", op)))},
	}
	for _, out := range []string{outcomeOK, outcomeMiss, outcomeError, outcomeFallback} {
		o.outcomes[out] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(
			attribute.String("redisservice.op", op), attribute.String("redisservice.outcome", out)))}
		o.spanAttrs[out] = []attribute.KeyValue{attribute.String("redisservice.outcome", out)}
	}
	v, _ := t.ops.LoadOrStore(op, o)
	return v.(*opTelemetry)
}

// observe is call with a span and measurements around it.
func observe[T any](s *Service, caller context.Context, op, key string, fn func(ctx context.Context) (T, error)) (T, error) {
	t := s.tel
	o := t.forOp(op)
	caller = orBackground(caller)
	ctx, span, recording := caller, trace.Span(nil), false
	if t.tracer != nil {
		ctx, span = t.tracer.Start(caller, o.spanName, o.spanStart...)
		defer span.End()
		// A span that is not sampled gets no attributes: they would be dropped.
		if recording = span.IsRecording(); recording && t.traceKeys {
			span.SetAttributes(attribute.String("redisservice.key", key))
		}
	}
	start := time.Now()
	var v T
	err := s.skipWhileDown(op, key) // a fast failure is a fallback, with its span
	if err == nil {
		v, err = try(s, ctx, op, key, fn)
	}
	out := outcomeOf(err)
	if t.operations != nil {
		t.operations.Add(ctx, 1, o.outcomes[out]...)
		t.duration.Record(ctx, time.Since(start).Seconds(), o.duration...)
	}
	if recording {
		span.SetAttributes(o.spanAttrs[out]...)
		if out == outcomeError || out == outcomeFallback {
			span.SetAttributes(attribute.String("error.type", errorType(err)))
			span.SetStatus(codes.Error, t.describe(op, key, err))
		}
	}
	return v, err
}

// outcomeOf classifies the result of call.
func outcomeOf(err error) string {
	switch {
	case err == nil:
		return outcomeOK
	case err == redis.Nil: //nolint:errorlint // call returns redis.Nil unwrapped
		return outcomeMiss
	case errors.Is(err, ErrClosed), errors.Is(err, ErrUnavailable):
		return outcomeFallback
	}
	return outcomeError
}

// errorType is a span's error.type: a small fixed set, for grouping.
func errorType(err error) string {
	var rerr redis.Error
	switch {
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, ErrDecode):
		return "decode"
	case errors.As(err, &rerr):
		return "redis"
	}
	return "connection"
}

// describe is a span's status description: err's text without the key
// that call put in it, unless keys are traced.
func (t *telemetry) describe(op, key string, err error) string {
	msg := err.Error()
	if t.traceKeys {
		return msg
	}
	return strings.TrimPrefix(msg, "redisservice: "+op+" "+strconv.Quote(key)+": ")
}

// cacheResult counts one Cache call by result (cacheHit, cacheMiss, ...).
func (t *telemetry) cacheResult(ctx context.Context, result string) {
	if t != nil && t.cache != nil {
		t.cache.Add(orBackground(ctx), 1, t.results[result]...)
	}
}

// rateLimited counts one rate-limit decision: allowed or denied when Redis
// answered, fail_open or fail_closed when the result is a fallback.
func (t *telemetry) rateLimited(ctx context.Context, allowed, fallback bool) {
	if t == nil || t.ratelimit == nil {
		return
	}
	d := decisionAllowed
	switch {
	case fallback && allowed:
		d = decisionFailOpen
	case fallback:
		d = decisionFailClosed
	case !allowed:
		d = decisionDenied
	}
	t.ratelimit.Add(orBackground(ctx), 1, t.decisions[d]...)
}

// attributeOptions returns, by value, the options that carry the
// attribute key=value.
func attributeOptions(key string, values ...string) map[string][]metric.AddOption {
	m := make(map[string][]metric.AddOption, len(values))
	for _, v := range values {
		m[v] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String(key, v)))}
	}
	return m
}

// orBackground returns ctx, or context.Background() for a nil ctx, which
// the SDK's exemplars and span parents cannot take.
func orBackground(ctx context.Context) context.Context {
	if ctx == nil {
		return context.Background()
	}
	return ctx
}
