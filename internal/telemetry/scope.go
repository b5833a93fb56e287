package telemetry

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Scope is the telemetry of one call that makes several round trips
// (Cache, most session calls, InvalidatePattern, HealthCheck, locks): one span
// and one count for the whole call, begun at its entry and ended when it
// returns. Its round trips find the scope in their ctx ([ScopeOf]) and
// record each as an event of the scope's span ([Scope.RoundTrip])
// instead of a span and a count of their own.
type Scope struct {
	t         *Telemetry
	o         *opTelemetry
	span      trace.Span // nil without a tracer
	recording bool
	start     time.Time
	missed    atomic.Bool // a round trip answered nil
	result    string      // the Cache result, set by the goroutine that began the scope
	lock      string      // the lock outcome, set by the goroutine that began the scope
}

// scopeKey is the ctx key of the current *Scope.
type scopeKey struct{}

// Begin starts the telemetry of one call of op that makes several round
// trips; key is shown as given (pass a redacted form of a secret). Use it
// at the entry of a method, with a named error result:
//
//	ctx, scope := s.tel.Begin(ctx, op, key)
//	defer scope.End(ctx, &err)
//
// On a nil t it returns ctx as it is and a nil scope, whose End does
// nothing: no allocation, no ctx wrapping.
func (t *Telemetry) Begin(ctx context.Context, op, key string) (context.Context, *Scope) {
	if t == nil {
		return ctx, nil
	}
	return t.beginScope(ctx, op, key)
}

func (t *Telemetry) beginScope(ctx context.Context, op, key string) (context.Context, *Scope) {
	sc := &Scope{t: t, o: t.forOp(op)}
	ctx, sc.span, sc.recording = t.startSpan(ctx, sc.o, key)
	sc.start = time.Now()
	return context.WithValue(ctx, scopeKey{}, sc), sc
}

// ScopeOf returns the scope ctx is in, or nil.
func ScopeOf(ctx context.Context) *Scope {
	if ctx == nil {
		return nil
	}
	sc, _ := ctx.Value(scopeKey{}).(*Scope)
	return sc
}

// Leave returns ctx for code of the caller's that a scoped call runs (a
// Cache loader): out of the scope, so that the calls it makes are
// recorded as calls of their own, but under the scope's span.
func (t *Telemetry) Leave(ctx context.Context) context.Context {
	if t == nil || ScopeOf(ctx) == nil {
		return ctx
	}
	return context.WithValue(ctx, scopeKey{}, (*Scope)(nil))
}

// End records the call: one count of its outcome, its duration, and the
// span's outcome and status. The outcome is that of *errp when it is set
// (fallback, miss for redis.Nil or an error Config.Absent reports, else
// error), else the Cache result, else miss when a round trip answered
// nil, else ok. A panic passing through is recorded as an error and goes on.
func (sc *Scope) End(ctx context.Context, errp *error) {
	if sc == nil {
		return
	}
	if r := recover(); r != nil {
		sc.finish(ctx, OutcomeError, "panic", fmt.Errorf("panic: %v", r))
		panic(r)
	}
	err := *errp
	out := OutcomeOK
	switch {
	case err != nil:
		out = sc.t.cfg.Outcome(err)
		if out == OutcomeMiss || (sc.t.cfg.Absent != nil && sc.t.cfg.Absent(err)) {
			out, err = OutcomeMiss, nil
		}
	case sc.result == CacheMiss || sc.result == CacheNotFound:
		out = OutcomeMiss
	case sc.result == "" && sc.missed.Load():
		out = OutcomeMiss
	}
	typ := ""
	if err != nil {
		typ = sc.t.cfg.ErrorType(err)
	}
	sc.finish(ctx, out, typ, err)
}

func (sc *Scope) finish(ctx context.Context, out, errType string, err error) {
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
		if sc.lock != "" {
			sc.span.SetAttributes(attribute.String("redisservice.lock.outcome", sc.lock))
		}
		if err != nil {
			sc.span.SetAttributes(attribute.String("error.type", errType))
			sc.span.SetStatus(codes.Error, t.describe(err))
		}
	}
	sc.span.End()
}

// RoundTrip records one round trip of the scope (or its fast failure),
// begun at start and ended with err, as an event "redisservice.round_trip"
// of the scope's span with its outcome, duration in seconds and error.type.
func (sc *Scope) RoundTrip(start time.Time, err error) {
	out := sc.t.cfg.Outcome(err)
	if out == OutcomeMiss {
		sc.missed.Store(true)
	}
	if sc.recording {
		attrs := make([]attribute.KeyValue, 2, 3)
		attrs[0] = attribute.String("redisservice.outcome", out)
		attrs[1] = attribute.Float64("redisservice.round_trip.duration", time.Since(start).Seconds())
		if out == OutcomeError || out == OutcomeFallback {
			attrs = append(attrs, attribute.String("error.type", sc.t.cfg.ErrorType(err)))
		}
		sc.span.AddEvent("redisservice.round_trip", trace.WithAttributes(attrs...))
	}
}
