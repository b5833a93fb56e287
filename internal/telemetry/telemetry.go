// Package telemetry holds the OpenTelemetry instruments of the calls:
// the meter and tracer, the counters and the duration histogram, the pool
// gauges, the span of a call ([Telemetry.Start]) or of a call of several
// round trips ([Telemetry.Begin], [Scope]), and the redaction of keys in
// span text ([Redact]). What it knows of the caller's errors it takes as
// functions in [Config]. A nil *Telemetry records nothing.
package telemetry

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Name names the meter and the tracer.
const Name = "github.com/vevurn/redisservice"

// Outcomes of a call: the values of the redisservice.outcome attribute.
const (
	OutcomeOK       = "ok"       // Redis answered with a value
	OutcomeMiss     = "miss"     // Redis answered nil: no such key, NX/XX not met
	OutcomeError    = "error"    // the call failed; the caller got its fallback and the error
	OutcomeFallback = "fallback" // Redis was not asked: the Service is closed or Redis known down
)

// Results of a Cache call: the values of redisservice.cache.result.
const (
	CacheHit      = "hit"       // decoded from Redis
	CacheLocalHit = "local_hit" // served from the in-process tier
	CacheMiss     = "miss"      // Redis answered, nothing usable: load ran or was shared
	CacheStale    = "stale"     // served past its TTL while a refresh runs
	CacheNotFound = "not_found" // a cached not-found
)

// Decisions of a rate limit: the values of redisservice.ratelimit.decision.
const (
	decisionAllowed    = "allowed"
	decisionDenied     = "denied"
	decisionFailOpen   = "fail_open"   // Redis gave no answer; allowed (the default)
	decisionFailClosed = "fail_closed" // Redis gave no answer; denied
)

// Outcomes of a request under the Idempotency-Key middleware: the values
// of redisservice.idempotency.outcome.
const (
	IdemStored      = "stored"       // the handler ran; its response is kept
	IdemReplayed    = "replayed"     // a stored response was replayed
	IdemConflict    = "conflict"     // 409: the same request is in flight
	IdemMismatch    = "mismatch"     // 422: the key was used with another request
	IdemFreed       = "freed"        // a 5xx, a panic or an unfinished handler: the key is freed
	IdemFailOpen    = "fail_open"    // Redis gave no answer; run unprotected (FailOpen)
	IdemUnavailable = "unavailable"  // Redis gave no answer; answered 503
	IdemCorrupt     = "corrupt"      // the stored response did not decode: dropped, answered 409
	IdemStoreFailed = "store_failed" // the handler ran, but its response could not be kept (a Redis error, or the lease was lost)
)

// Outcomes of a lock call that Redis answered: the values of
// redisservice.lock.outcome, counted with the call's redisservice.op.
const (
	LockAcquired  = "acquired"  // TryLock or Lock took the lock
	LockHeld      = "held"      // TryLock found another holder; Lock's ctx ended while one held it
	LockRefreshed = "refreshed" // Refresh: the holder still had it, its TTL is set again
	LockReleased  = "released"  // Unlock: the holder had it (or it expired untaken); it is free
	LockLost      = "lost"      // Refresh or Unlock: another holder has taken the key since
)

// lockOutcomes are the Lock constants.
var lockOutcomes = [...]string{LockAcquired, LockHeld, LockRefreshed, LockReleased, LockLost}

// Config is what [New] needs: the providers, and what the caller's
// errors mean. Outcome and ErrorType are required when a provider is set.
type Config struct {
	MeterProvider  metric.MeterProvider // nil: no metrics
	TracerProvider trace.TracerProvider // nil: no spans
	TraceKeys      bool                 // keys and full error texts in spans
	// PoolStats feeds the pool gauges; nil or a nil result observes nothing.
	PoolStats func() *redis.PoolStats
	// Outcome classifies a call's error: one of the Outcome constants.
	Outcome func(err error) string
	// ErrorType is a span's error.type for a non-nil err: a small fixed set.
	ErrorType func(err error) string
	// Absent reports an error that a [Scope] records as a miss; may be nil.
	Absent func(err error) bool
	// Unkeyed returns the cause of an error that names a key; see [Redact].
	Unkeyed func(err error) (cause error, ok bool)
}

// Telemetry holds the instruments and tracer of one Service. A nil
// *Telemetry records nothing; so does a nil instrument or tracer in it.
type Telemetry struct {
	cfg        Config
	tracer     trace.Tracer // nil without a TracerProvider
	operations metric.Int64Counter
	duration   metric.Float64Histogram
	cache      metric.Int64Counter
	ratelimit  metric.Int64Counter
	idem       metric.Int64Counter
	lock       metric.Int64Counter
	pool       metric.Registration // the pool gauges' callback, unregistered by Close

	ops       sync.Map                      // op string -> *opTelemetry
	results   map[string][]metric.AddOption // by cache result; read-only after New
	decisions map[string][]metric.AddOption // by rate-limit decision; read-only after New
	idemOuts  map[string][]metric.AddOption // by idempotency outcome; read-only after New
}

// opTelemetry is what one op records with, built once per op so that a
// call allocates nothing for its attributes.
type opTelemetry struct {
	op        string
	spanName  string
	spanStart []trace.SpanStartOption
	outcomes  map[string][]metric.AddOption   // by outcome
	spanAttrs map[string][]attribute.KeyValue // by outcome
	duration  []metric.RecordOption
	// lock holds the options by lock outcome, built on the op's first
	// lock outcome; only lock calls have them.
	lock atomic.Pointer[map[string][]metric.AddOption]
}

// New returns the telemetry of cfg, or nil when neither provider is set.
func New(cfg Config) (*Telemetry, error) {
	if cfg.MeterProvider == nil && cfg.TracerProvider == nil {
		return nil, nil
	}
	t := &Telemetry{cfg: cfg}
	if cfg.TracerProvider != nil {
		t.tracer = cfg.TracerProvider.Tracer(Name)
	}
	if cfg.MeterProvider == nil {
		return t, nil
	}
	t.results = attributeOptions("redisservice.cache.result", CacheHit, CacheLocalHit, CacheMiss, CacheStale, CacheNotFound)
	t.decisions = attributeOptions("redisservice.ratelimit.decision", decisionAllowed, decisionDenied, decisionFailOpen, decisionFailClosed)
	t.idemOuts = attributeOptions("redisservice.idempotency.outcome", IdemStored, IdemReplayed, IdemConflict, IdemMismatch, IdemFreed, IdemFailOpen, IdemUnavailable, IdemCorrupt, IdemStoreFailed)
	m := cfg.MeterProvider.Meter(Name)
	var errs [7]error
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
	t.idem, errs[5] = m.Int64Counter("redisservice.idempotency.requests",
		metric.WithDescription("Requests with an Idempotency-Key by outcome (stored, replayed, conflict, mismatch, freed, fail_open, unavailable, corrupt, store_failed)."),
		metric.WithUnit("{request}"))
	t.lock, errs[6] = m.Int64Counter("redisservice.lock.requests",
		metric.WithDescription("Lock calls that Redis answered, by operation and outcome (acquired, held, refreshed, released, lost)."),
		metric.WithUnit("{request}"))
	t.pool, errs[4] = registerPool(m, cfg.PoolStats)
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return t, nil
}

// registerPool registers the pool gauges, observed from stats.
func registerPool(m metric.Meter, stats func() *redis.PoolStats) (metric.Registration, error) {
	var errs [7]error
	var (
		conns                         metric.Int64ObservableUpDownCounter
		hits, misses, timeouts, stale metric.Int64ObservableCounter
		wait                          metric.Float64ObservableCounter
	)
	// An up-down counter rather than a gauge, as OpenTelemetry's
	// db.client.connection.count: Services sharing a provider then add up
	// their pools instead of the last one hiding the others.
	conns, errs[0] = m.Int64ObservableUpDownCounter("redisservice.pool.connections",
		metric.WithDescription("Connections in the go-redis pool by state (idle, used), summed over the nodes of a cluster."),
		metric.WithUnit("{connection}"))
	hits, errs[1] = m.Int64ObservableCounter("redisservice.pool.hits",
		metric.WithDescription("Times a free connection was found in the pool."))
	misses, errs[2] = m.Int64ObservableCounter("redisservice.pool.misses",
		metric.WithDescription("Times no free connection was found in the pool."))
	timeouts, errs[3] = m.Int64ObservableCounter("redisservice.pool.timeouts",
		metric.WithDescription("Waits for a connection that ran out of PoolTimeout."))
	stale, errs[4] = m.Int64ObservableCounter("redisservice.pool.stale",
		metric.WithDescription("Connections removed from the pool as stale."))
	wait, errs[5] = m.Float64ObservableCounter("redisservice.pool.wait_time",
		metric.WithDescription("Total time spent waiting for a connection."),
		metric.WithUnit("s"))
	idle := metric.WithAttributeSet(attribute.NewSet(attribute.String("redisservice.pool.state", "idle")))
	used := metric.WithAttributeSet(attribute.NewSet(attribute.String("redisservice.pool.state", "used")))
	var reg metric.Registration
	reg, errs[6] = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if stats == nil {
			return nil
		}
		ps := stats()
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
	return reg, errors.Join(errs[:]...)
}

// Close unregisters the pool gauges.
func (t *Telemetry) Close() {
	if t != nil && t.pool != nil {
		_ = t.pool.Unregister()
	}
}

// forOp returns op's span name and attribute sets, built on first use.
// ops are constants of the caller (and of its callers), so the map stays
// small.
func (t *Telemetry) forOp(op string) *opTelemetry {
	if v, ok := t.ops.Load(op); ok {
		return v.(*opTelemetry)
	}
	o := &opTelemetry{
		op:       op,
		spanName: "redisservice." + op,
		spanStart: []trace.SpanStartOption{
			trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.String("db.system.name", "redis"), attribute.String("redisservice.op", op)),
		},
		outcomes:  make(map[string][]metric.AddOption, 4),
		spanAttrs: make(map[string][]attribute.KeyValue, 4),
		duration:  []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("redisservice.op", op)))},
	}
	for _, out := range []string{OutcomeOK, OutcomeMiss, OutcomeError, OutcomeFallback} {
		o.outcomes[out] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(
			attribute.String("redisservice.op", op), attribute.String("redisservice.outcome", out)))}
		o.spanAttrs[out] = []attribute.KeyValue{attribute.String("redisservice.outcome", out)}
	}
	v, _ := t.ops.LoadOrStore(op, o)
	return v.(*opTelemetry)
}

// Call is the telemetry of one call of a single round trip, from
// [Telemetry.Start]: Record its result, then End its span.
type Call struct {
	t         *Telemetry
	o         *opTelemetry
	span      trace.Span // nil without a tracer
	recording bool
	start     time.Time
}

// Start starts the span of one call of op on key (t must not be nil). It
// returns the ctx to run the call in: the span's, or ctx (Background for
// a nil ctx) without a tracer.
func (t *Telemetry) Start(ctx context.Context, op, key string) (context.Context, Call) {
	c := Call{t: t, o: t.forOp(op)}
	ctx, c.span, c.recording = t.startSpan(ctx, c.o, key)
	c.start = time.Now()
	return ctx, c
}

// startSpan starts o's span on key, when there is a tracer, and returns
// its ctx (ctx, or Background for a nil ctx, without a tracer) and
// whether it records.
func (t *Telemetry) startSpan(ctx context.Context, o *opTelemetry, key string) (context.Context, trace.Span, bool) {
	ctx = orBackground(ctx)
	if t.tracer == nil {
		return ctx, nil, false
	}
	ctx, span := t.tracer.Start(ctx, o.spanName, o.spanStart...)
	// A span that is not sampled gets no attributes: they would be dropped.
	recording := span.IsRecording()
	if recording && t.cfg.TraceKeys {
		span.SetAttributes(attribute.String("redisservice.key", key))
	}
	return ctx, span, recording
}

// Record counts the call by the outcome of err, records its duration,
// and sets the span's outcome and, for a failure, its error.type and status.
func (c Call) Record(ctx context.Context, err error) {
	t, o := c.t, c.o
	out := t.cfg.Outcome(err)
	if t.operations != nil {
		t.operations.Add(ctx, 1, o.outcomes[out]...)
		t.duration.Record(ctx, time.Since(c.start).Seconds(), o.duration...)
	}
	if c.recording {
		c.span.SetAttributes(o.spanAttrs[out]...)
		if out == OutcomeError || out == OutcomeFallback {
			c.span.SetAttributes(attribute.String("error.type", t.cfg.ErrorType(err)))
			c.span.SetStatus(codes.Error, t.describe(err))
		}
	}
}

// End ends the call's span, if it has one.
func (c Call) End() {
	if c.span != nil {
		c.span.End()
	}
}

// CacheResult counts one Cache call by result (CacheHit, CacheMiss, ...)
// and, inside a [Scope], sets the scope's result.
func (t *Telemetry) CacheResult(ctx context.Context, result string) {
	if t == nil {
		return
	}
	if sc := ScopeOf(ctx); sc != nil {
		sc.result = result
	}
	if t.cache != nil {
		t.cache.Add(orBackground(ctx), 1, t.results[result]...)
	}
}

// RateLimited counts one rate-limit decision: allowed or denied when Redis
// answered, fail_open or fail_closed when the result is a fallback.
func (t *Telemetry) RateLimited(ctx context.Context, allowed, fallback bool) {
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

// Idempotency counts one request with an Idempotency-Key by outcome, one
// of the Idem constants.
func (t *Telemetry) Idempotency(ctx context.Context, outcome string) {
	if t == nil || t.idem == nil {
		return
	}
	t.idem.Add(orBackground(ctx), 1, t.idemOuts[outcome]...)
}

// LockOutcome counts one lock call that Redis answered by outcome (one of
// the Lock constants) and its op, and sets the outcome on the call's span.
// ctx must be in the call's [Scope]; outside one it does nothing.
func (t *Telemetry) LockOutcome(ctx context.Context, outcome string) {
	if t == nil {
		return
	}
	sc := ScopeOf(ctx)
	if sc == nil {
		return
	}
	sc.lock = outcome
	if t.lock != nil {
		t.lock.Add(ctx, 1, sc.o.lockOptions(outcome)...)
	}
}

// lockOptions returns the options that carry o's op and the lock outcome
// out. Two first calls may both build them; either result is the same.
func (o *opTelemetry) lockOptions(out string) []metric.AddOption {
	m := o.lock.Load()
	if m == nil {
		built := make(map[string][]metric.AddOption, len(lockOutcomes))
		for _, v := range lockOutcomes {
			built[v] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(
				attribute.String("redisservice.op", o.op), attribute.String("redisservice.lock.outcome", v)))}
		}
		o.lock.CompareAndSwap(nil, &built)
		m = o.lock.Load()
	}
	return (*m)[out]
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
