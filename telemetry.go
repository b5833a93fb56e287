package redisservice

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/vevurn/redisservice/internal/telemetry"
)

// This file holds the glue to the OpenTelemetry instrumentation of
// internal/telemetry: what the errors of the calls mean to it, and call's
// span and measurements. The instruments are made only when
// Options.MeterProvider or Options.TracerProvider is set. Without either,
// Service.tel is nil and a call pays one nil check.

// Outcomes of a call: the values of the redisservice.outcome attribute.
const (
	outcomeOK       = telemetry.OutcomeOK
	outcomeMiss     = telemetry.OutcomeMiss
	outcomeError    = telemetry.OutcomeError
	outcomeFallback = telemetry.OutcomeFallback
)

// Results of a Cache call: the values of redisservice.cache.result.
const (
	cacheHit      = telemetry.CacheHit
	cacheLocalHit = telemetry.CacheLocalHit
	cacheMiss     = telemetry.CacheMiss
	cacheStale    = telemetry.CacheStale
	cacheNotFound = telemetry.CacheNotFound // a cached ErrNotFound
)

// newTelemetry returns the telemetry of opts, or nil when neither
// provider is set. rdb feeds the pool gauges.
func newTelemetry(opts Options, rdb redis.UniversalClient) (*telemetry.Telemetry, error) {
	return telemetry.New(telemetry.Config{
		MeterProvider:  opts.MeterProvider,
		TracerProvider: opts.TracerProvider,
		TraceKeys:      opts.TraceKeys,
		PoolStats:      rdb.PoolStats,
		Outcome:        outcomeOf,
		ErrorType:      errorType,
		Absent:         notThere,
		Unkeyed:        opCause,
	})
}

// notThere reports an error that means Redis answered and the thing asked
// for is not there: a remembered not-found, or a lock held by another
// holder or lost to one. A scoped call that returns one counts as a miss,
// as SET NX that finds the key does, and its span is not an error.
func notThere(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrLockHeld) || errors.Is(err, ErrLockLost)
}

// observe is call with a span and measurements around it.
func observe[T any](s *Service, caller context.Context, op, key string, fn func(ctx context.Context) (T, error)) (T, error) {
	if sc := telemetry.ScopeOf(caller); sc != nil {
		return step(s, sc, caller, op, key, fn) // a round trip of a scoped call
	}
	ctx, c := s.tel.Start(caller, op, key)
	defer c.End()
	var v T
	err := s.skipWhileDown(op, key) // a fast failure is a fallback, with its span
	if err == nil {
		v, err = try(s, ctx, op, key, fn)
	}
	c.Record(ctx, err)
	return v, err
}

// step is call inside a scope: one round trip (or its fast failure),
// recorded as an event of the scope's span.
func step[T any](s *Service, sc *telemetry.Scope, ctx context.Context, op, key string, fn func(ctx context.Context) (T, error)) (T, error) {
	start := time.Now()
	var v T
	err := s.skipWhileDown(op, key)
	if err == nil {
		v, err = try(s, ctx, op, key, fn)
	}
	sc.RoundTrip(start, err)
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

// describeErr is err's text for a span or a log line: as it is when keys
// are traced, else without the keys that the errors of calls carry
// (opError) and without the text of Redis's error replies, which can quote
// the command's arguments (telemetry.Redact).
func describeErr(err error, traceKeys bool) string {
	return telemetry.Describe(err, traceKeys, opCause)
}

// redact is describeErr without TraceKeys.
func redact(err error) string { return telemetry.Redact(err, opCause) }

// opCause returns the cause of err when err itself is an opError, whose
// text names its key.
func opCause(err error) (error, bool) {
	if oe, ok := err.(*opError); ok { //nolint:errorlint // the opError itself, not one it wraps
		return oe.err, true
	}
	return nil, false
}
