package redisservice

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/vevurn/redisservice/internal/deadline"
)

// This file holds what every call shares: the time bound, error
// classification, rate-limited logging and the counters behind Stats.

func noop() {}

// begin bounds ctx for one call. A ctx with a deadline is used as it is;
// one without gets Options.Timeout. It fails with ErrClosed once the
// Service is closed.
func (s *Service) begin(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if s.closed.Load() {
		return ctx, noop, ErrClosed
	}
	bounded, cancel := s.deadlines.Bound(ctx)
	return bounded, cancel, nil
}

// call runs fn for one operation: it refuses after Close, fails fast
// with ErrUnavailable while Redis is known to be down (skipWhileDown), bounds
// the caller's ctx, and classifies the outcome. It returns fn's value with
// a nil error, with redis.Nil itself (unwrapped, for the caller to read as
// a miss), or the zero value with a wrapped error. key is the caller's
// key, for error messages and logs.
func call[T any](s *Service, caller context.Context, op, key string, fn func(ctx context.Context) (T, error)) (T, error) {
	if s.tel != nil {
		return observe(s, caller, op, key, fn) // telemetry.go
	}
	if err := s.skipWhileDown(op, key); err != nil {
		var zero T
		return zero, err
	}
	return try(s, caller, op, key, fn)
}

// try is call without the fast failure: it always asks Redis.
func try[T any](s *Service, caller context.Context, op, key string, fn func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	ctx, done, err := s.begin(caller)
	if err != nil {
		return zero, s.fail(caller, op, key, err)
	}
	v, err := fn(ctx)
	if err != nil && err != redis.Nil { //nolint:errorlint // go-redis returns redis.Nil unwrapped
		err = deadline.Wrap(ctx, err)
		done()
		return zero, s.fail(caller, op, key, err)
	}
	done()
	s.breaker.MarkUp()
	return v, err
}

// skipWhileDown returns [ErrUnavailable], wrapped and counted as a failed
// call with its fallback, while calls fail fast (see
// [breaker.Breaker.Unavailable]). After Close it returns nil, leaving
// [ErrClosed] to call.
func (s *Service) skipWhileDown(op, key string) error {
	if s.closed.Load() || !s.breaker.Unavailable() {
		return nil
	}
	return s.fail(context.Background(), op, key, ErrUnavailable)
}

// fail records a failed call and wraps err with the operation and the
// caller's key. caller is the ctx the caller passed in, before begin
// bounded it. key is shown as given; callers pass a redacted form for
// secrets such as session ids.
func (s *Service) fail(caller context.Context, op, key string, err error) error {
	if errors.Is(err, ErrClosed) || (s.closed.Load() && errors.Is(err, redis.ErrClosed)) {
		s.stats.fallbacks.Add(1)
		return wrapOp(op, key, ErrClosed)
	}
	s.stats.errors.Add(1)
	s.stats.fallbacks.Add(1)
	switch {
	case errors.Is(err, ErrUnavailable), errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrAutoPipelineQueueFull):
		// Nothing was asked of Redis: a fast failure, or a pool or an
		// autopipeliner queue that is full (which says nothing of Redis
		// itself; if it stalled, the calls ahead time out and tell).
	case !isConnError(err):
		s.breaker.MarkUp() // Redis answered, if only with an error
	case caller == nil || deadline.Err(caller) == nil:
		// Only when the caller's own cancellation or deadline is not the
		// cause: those say nothing about Redis.
		s.breaker.MarkDown()
	}
	s.logFailure(caller, op, key, err)
	return wrapOp(op, key, err)
}

// invalid wraps a validation error. Nothing was sent to Redis.
func invalid(op, key string, err error) error {
	return wrapOp(op, key, err)
}

// isConnError reports whether err says the connection, not the command,
// failed. Redis's own error replies (WRONGTYPE, script errors) do not,
// nor a value that does not decode or that go-redis cannot write: the
// caller's mistake says nothing about the connection.
func isConnError(err error) bool {
	var rerr redis.Error
	return !errors.As(err, &rerr) && !errors.Is(err, ErrDecode) && !errors.Is(err, ErrInvalidArgument) &&
		!strings.Contains(err.Error(), "redis: can't marshal")
}

// logFailure logs err at most once a second per operation; the rest are
// counted and reported with the next line that gets through. The line
// carries the key, and the text of Redis's replies (which can quote keys),
// only with Options.TraceKeys.
func (s *Service) logFailure(ctx context.Context, op, key string, err error) {
	allowed, suppressed := s.logGate.allow(op, time.Now().UnixNano())
	if !allowed {
		s.stats.logsSuppressed.Add(1)
		return
	}
	if ctx == nil {
		ctx = context.Background()
	}
	attrs := make([]slog.Attr, 0, 4)
	attrs = append(attrs, slog.String("op", op))
	if s.opts.TraceKeys {
		attrs = append(attrs, slog.String("key", key))
	}
	attrs = append(attrs,
		slog.String("error", describeErr(err, s.opts.TraceKeys)),
		slog.Uint64("suppressed", suppressed))
	s.log.LogAttrs(ctx, slog.LevelWarn, "redisservice: redis call failed", attrs...)
}

// logGate lets one log line per operation through each second. The zero
// value is ready to use.
type logGate struct {
	ops sync.Map // op string -> *gateEntry
}

type gateEntry struct {
	last       atomic.Int64  // unix nanos of the last line let through
	suppressed atomic.Uint64 // lines held back since then
}

// allow reports whether a line for op may be logged at now, and how many
// were held back since the last one.
func (g *logGate) allow(op string, now int64) (bool, uint64) {
	v, ok := g.ops.Load(op)
	if !ok {
		v, _ = g.ops.LoadOrStore(op, new(gateEntry))
	}
	e := v.(*gateEntry)
	last := e.last.Load()
	if now-last < int64(time.Second) || !e.last.CompareAndSwap(last, now) {
		e.suppressed.Add(1)
		return false, 0
	}
	return true, e.suppressed.Swap(0)
}

// counters back [Stats]. Each is updated with one atomic add.
type counters struct {
	hits           atomic.Uint64
	misses         atomic.Uint64
	errors         atomic.Uint64
	fallbacks      atomic.Uint64
	logsSuppressed atomic.Uint64
}

// found counts a lookup as a hit or a miss.
func (s *Service) found(hit bool) {
	if hit {
		s.stats.hits.Add(1)
	} else {
		s.stats.misses.Add(1)
	}
}
