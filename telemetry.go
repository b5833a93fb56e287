package redisservice

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
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

// Outcomes of a request under IdempotencyMiddleware: the values of
// redisservice.idempotency.outcome.
const (
	idemStored      = "stored"      // the handler ran; its response is kept
	idemReplayed    = "replayed"    // a stored response was replayed
	idemConflict    = "conflict"    // 409: the same request is in flight
	idemMismatch    = "mismatch"    // 422: the key was used with another request
	idemFreed       = "freed"       // a 5xx, a panic or an unfinished handler: the key is freed
	idemFailOpen    = "fail_open"   // Redis gave no answer; run unprotected (FailOpen)
	idemUnavailable = "unavailable" // Redis gave no answer; answered 503
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
	idem       metric.Int64Counter
	pool       metric.Registration // the pool gauges' callback, unregistered by Close

	ops       sync.Map                      // op string -> *opTelemetry
	results   map[string][]metric.AddOption // by cache result; read-only after newTelemetry
	decisions map[string][]metric.AddOption // by rate-limit decision; read-only after newTelemetry
	idemOuts  map[string][]metric.AddOption // by idempotency outcome; read-only after newTelemetry
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
	t.idemOuts = attributeOptions("redisservice.idempotency.outcome", idemStored, idemReplayed, idemConflict, idemMismatch, idemFreed, idemFailOpen, idemUnavailable)
	m := opts.MeterProvider.Meter(instrumentationName)
	var errs [12]error
	var (
		conns                         metric.Int64ObservableUpDownCounter
		hits, misses, timeouts, stale metric.Int64ObservableCounter
		wait                          metric.Float64ObservableCounter
	)
	t.operations, errs[0] = m.Int64Counter("redisservice.operations",
		metric.WithDescription("Calls by operation and final outcome (ok, miss, error, fallback), one per call whatever its round trips."),
		metric.WithUnit("{operation}"))
	t.duration, errs[1] = m.Float64Histogram("redisservice.operation.duration",
		metric.WithDescription("Duration of calls, entry to return, by operation, fallbacks included."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	t.cache, errs[2] = m.Int64Counter("redisservice.cache.requests",
		metric.WithDescription("Cache calls by result (hit, local_hit, miss, stale, not_found)."),
		metric.WithUnit("{request}"))
	t.ratelimit, errs[3] = m.Int64Counter("redisservice.ratelimit.decisions",
		metric.WithDescription("Rate-limit decisions (allowed, denied, fail_open, fail_closed)."),
		metric.WithUnit("{decision}"))
	t.idem, errs[11] = m.Int64Counter("redisservice.idempotency.requests",
		metric.WithDescription("Requests with an Idempotency-Key by outcome (stored, replayed, conflict, mismatch, freed, fail_open, unavailable)."),
		metric.WithUnit("{request}"))
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
	if sc := scopeOf(caller); sc != nil {
		return step(s, sc, caller, op, key, fn) // a round trip of a scoped call
	}
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
			span.SetStatus(codes.Error, t.describe(err))
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
	var (
		rerr redis.Error
		lerr *loadError
		perr *panicError
	)
	switch {
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &perr):
		return "panic" // a Cache loader's panic, returned as an error
	case errors.As(err, &lerr):
		return "load" // a Cache loader's own error
	case errors.Is(err, ErrDecode):
		return "decode"
	case errors.Is(err, ErrInvalidKey), errors.Is(err, ErrInvalidTTL), errors.Is(err, ErrInvalidArgument), errors.Is(err, ErrFlushDisabled):
		return "invalid"
	case errors.Is(err, ErrConflict):
		return "conflict"
	case errors.As(err, &rerr):
		return "redis"
	}
	return "connection"
}

// describe is a span's status description: see describeErr.
func (t *telemetry) describe(err error) string { return describeErr(err, t.traceKeys) }

// describeErr is err's text for a span or a log line: as it is when keys
// are traced, else without the keys that the errors of calls carry
// (opError) and without the text of Redis's error replies, which can quote
// the command's arguments. The errors of several calls joined, or wrapped
// with fmt.Errorf, lose each call's key too.
func describeErr(err error, traceKeys bool) string {
	if traceKeys {
		return err.Error()
	}
	return redact(err)
}

// redact is err's text with each opError in it reduced to its cause, and
// each Redis error reply to its code ("WRONGTYPE", "ERR").
func redact(err error) string {
	if oe, ok := err.(*opError); ok { //nolint:errorlint // the opError itself, not one it wraps
		return strings.TrimPrefix(redact(oe.err), "redisservice: ")
	}
	if _, ok := err.(redis.Error); ok { //nolint:errorlint // the reply itself
		return replyCode(err.Error())
	}
	msg := err.Error()
	var causes []error
	switch u := err.(type) { //nolint:errorlint // the wrapping, level by level
	case interface{ Unwrap() error }:
		causes = []error{u.Unwrap()}
	case interface{ Unwrap() []error }:
		causes = u.Unwrap()
	}
	for _, c := range causes {
		if c == nil {
			continue
		}
		if full, short := c.Error(), redact(c); full != short {
			if !strings.Contains(msg, full) {
				// err quotes c without the package prefix (errText).
				full, short = errText(c), strings.TrimPrefix(short, "redisservice: ")
			}
			msg = strings.Replace(msg, full, short, 1)
		}
	}
	return msg
}

// replyCode is the code that starts a Redis error reply ("WRONGTYPE
// Operation against…"), or "redis error" when the reply starts otherwise
// (a script's own error_reply may start with anything).
func replyCode(reply string) string {
	code, _, _ := strings.Cut(reply, " ")
	for i := 0; i < len(code); i++ {
		if c := code[i]; (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return "redis error"
		}
	}
	if code == "" {
		return "redis error"
	}
	return code
}

// cacheResult counts one Cache call by result (cacheHit, cacheMiss, ...).
func (t *telemetry) cacheResult(ctx context.Context, result string) {
	if t == nil {
		return
	}
	if sc := scopeOf(ctx); sc != nil {
		sc.result = result
	}
	if t.cache != nil {
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

// idempotency counts one request with an Idempotency-Key by outcome.
func (t *telemetry) idempotency(ctx context.Context, outcome string) {
	if t == nil || t.idem == nil {
		return
	}
	t.idem.Add(orBackground(ctx), 1, t.idemOuts[outcome]...)
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

// opScope is the telemetry of one call that makes several round trips
// (Cache, most session calls, InvalidatePattern, HealthCheck): one span
// and one count for the whole call, begun at its entry and ended when it
// returns. Its round trips go through call as usual, which finds the
// scope in their ctx and records each as an event of the scope's span
// instead of a span and a count of its own.
type opScope struct {
	t         *telemetry
	o         *opTelemetry
	key       string
	span      trace.Span // nil without a tracer
	recording bool
	start     time.Time
	missed    atomic.Bool // a round trip answered nil (redis.Nil)
	result    string      // the Cache result, set by the goroutine that began the scope
}

// scopeKey is the ctx key of the current *opScope.
type scopeKey struct{}

// begin starts the telemetry of one call of op that makes several round
// trips; key is shown as given (pass a redacted form of a secret). Use it
// at the entry of a method, with a named error result:
//
//	ctx, scope := s.tel.begin(ctx, op, key)
//	defer scope.end(ctx, &err)
//
// Without telemetry it returns ctx as it is and a nil scope, whose end
// does nothing: no allocation, no ctx wrapping.
func (t *telemetry) begin(ctx context.Context, op, key string) (context.Context, *opScope) {
	if t == nil {
		return ctx, nil
	}
	return t.beginScope(ctx, op, key)
}

func (t *telemetry) beginScope(ctx context.Context, op, key string) (context.Context, *opScope) {
	sc := &opScope{t: t, o: t.forOp(op), key: key}
	ctx = orBackground(ctx)
	if t.tracer != nil {
		ctx, sc.span = t.tracer.Start(ctx, sc.o.spanName, sc.o.spanStart...)
		if sc.recording = sc.span.IsRecording(); sc.recording && t.traceKeys {
			sc.span.SetAttributes(attribute.String("redisservice.key", key))
		}
	}
	sc.start = time.Now()
	return context.WithValue(ctx, scopeKey{}, sc), sc
}

// scopeOf returns the scope ctx is in, or nil.
func scopeOf(ctx context.Context) *opScope {
	if ctx == nil {
		return nil
	}
	sc, _ := ctx.Value(scopeKey{}).(*opScope)
	return sc
}

// leave returns ctx for code of the caller's that a scoped call runs (a
// Cache loader): out of the scope, so that the calls it makes are
// recorded as calls of their own, but under the scope's span.
func (t *telemetry) leave(ctx context.Context) context.Context {
	if t == nil || scopeOf(ctx) == nil {
		return ctx
	}
	return context.WithValue(ctx, scopeKey{}, (*opScope)(nil))
}

// end records the call: one count of its outcome, its duration, and the
// span's outcome and status. The outcome is that of *errp when it is set
// (fallback, miss for ErrNotFound, else error), else the Cache result, else
// miss when a round trip answered nil, else ok. A panic passing through is
// recorded as an error and goes on.
func (sc *opScope) end(ctx context.Context, errp *error) {
	if sc == nil {
		return
	}
	if r := recover(); r != nil {
		sc.finish(ctx, outcomeError, "panic", fmt.Errorf("panic: %v", r))
		panic(r)
	}
	err := *errp
	out := outcomeOK
	switch {
	case err != nil:
		out = outcomeOf(err)
		if out == outcomeMiss || errors.Is(err, ErrNotFound) {
			out, err = outcomeMiss, nil
		}
	case sc.result == cacheMiss || sc.result == cacheNotFound:
		out = outcomeMiss
	case sc.result == "" && sc.missed.Load():
		out = outcomeMiss
	}
	typ := ""
	if err != nil {
		typ = errorType(err)
	}
	sc.finish(ctx, out, typ, err)
}

func (sc *opScope) finish(ctx context.Context, out, errType string, err error) {
	t, o := sc.t, sc.o
	if t.operations != nil {
		ctx = orBackground(ctx)
		t.operations.Add(ctx, 1, o.outcomes[out]...)
		t.duration.Record(ctx, time.Since(sc.start).Seconds(), o.duration...)
	}
	if sc.span == nil {
		return
	}
	if sc.recording {
		sc.span.SetAttributes(o.spanAttrs[out]...)
		if sc.result != "" {
			sc.span.SetAttributes(attribute.String("redisservice.cache.result", sc.result))
		}
		if err != nil {
			sc.span.SetAttributes(attribute.String("error.type", errType))
			sc.span.SetStatus(codes.Error, t.describe(err))
		}
	}
	sc.span.End()
}

// step is call inside a scope: one round trip (or its fast failure),
// recorded as an event "redisservice.round_trip" of the scope's span
// with its outcome, duration in seconds and error.type.
func step[T any](s *Service, sc *opScope, ctx context.Context, op, key string, fn func(ctx context.Context) (T, error)) (T, error) {
	start := time.Now()
	var v T
	err := s.skipWhileDown(op, key)
	if err == nil {
		v, err = try(s, ctx, op, key, fn)
	}
	out := outcomeOf(err)
	if out == outcomeMiss {
		sc.missed.Store(true)
	}
	if sc.recording {
		attrs := make([]attribute.KeyValue, 2, 3)
		attrs[0] = attribute.String("redisservice.outcome", out)
		attrs[1] = attribute.Float64("redisservice.round_trip.duration", time.Since(start).Seconds())
		if out == outcomeError || out == outcomeFallback {
			attrs = append(attrs, attribute.String("error.type", errorType(err)))
		}
		sc.span.AddEvent("redisservice.round_trip", trace.WithAttributes(attrs...))
	}
	return v, err
}
