package oteltest_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// This file checks that a call making several round trips is one
// operation: one span, one count and one duration, whatever it sends.

// outcome is a span's redisservice.outcome.
func outcome(s sdktrace.ReadOnlySpan) string {
	v, _ := spanAttr(s, "redisservice.outcome")
	return v
}

// roundTrips returns the outcomes of a span's round-trip events.
func roundTrips(s sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, e := range s.Events() {
		if e.Name != "redisservice.round_trip" {
			continue
		}
		for _, a := range e.Attributes {
			if a.Key == "redisservice.outcome" {
				out = append(out, a.Value.AsString())
			}
		}
	}
	return out
}

// TestCacheOneSpanPerCall: a miss (GET, the recheck in the load, SET) is
// one span, each hit after it another, and nothing else is recorded.
func TestCacheOneSpanPerCall(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	load := func(context.Context) (int, error) { return 42, nil }
	for range 3 {
		v, err := redisservice.Cache(ctx, o.svc, "c", time.Minute, load)
		require.NoError(t, err)
		require.Equal(t, 42, v)
	}
	require.Len(t, o.spans.Ended(), 3, "only the three Cache spans")
	spans := o.named("redisservice.cache")
	require.Len(t, spans, 3)
	for i, want := range []struct{ outcome, result string }{{"miss", "miss"}, {"ok", "hit"}, {"ok", "hit"}} {
		assert.Equal(t, want.outcome, outcome(spans[i]), "call %d", i)
		res, _ := spanAttr(spans[i], "redisservice.cache.result")
		assert.Equal(t, want.result, res, "call %d", i)
	}
	assert.Equal(t, []string{"miss", "miss", "ok"}, roundTrips(spans[0]), "GET, recheck with the fleet lock, SET")
	assert.Equal(t, []string{"ok"}, roundTrips(spans[1]))
	for _, s := range spans {
		sys, _ := spanAttr(s, "db.system.name")
		assert.Equal(t, "redis", sys)
		assert.Equal(t, codes.Unset, s.Status().Code)
	}
	assert.Equal(t, map[string]int64{
		"redisservice.op=cache,redisservice.outcome=miss": 1,
		"redisservice.op=cache,redisservice.outcome=ok":   2,
	}, o.sums(t, "redisservice.operations"))
	assert.Equal(t, map[string]int64{"redisservice.op=cache": 3}, o.sums(t, "redisservice.operation.duration"))
	assert.Equal(t, map[string]int64{
		"redisservice.cache.result=miss": 1,
		"redisservice.cache.result=hit":  2,
	}, o.sums(t, "redisservice.cache.requests"))
}

// TestSessionsOneSpanPerCall: every session call is one span and one
// count, however many round trips it makes.
func TestSessionsOneSpanPerCall(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	id, err := redisservice.NewSessionID()
	require.NoError(t, err)
	require.NoError(t, o.svc.CreateSession(ctx, id, redisservice.SessionData{UserID: "u1"}, time.Hour))
	ok, err := o.svc.UpdateSessionActivity(ctx, id)
	require.NoError(t, err)
	require.True(t, ok)
	_, found, err := o.svc.GetSession(ctx, id)
	require.NoError(t, err)
	require.True(t, found)
	_, found, err = o.svc.GetSession(ctx, "unknown")
	require.NoError(t, err)
	require.False(t, found)
	ok, err = o.svc.UpdateSession(ctx, id, func(d *redisservice.SessionData) error { d.Role = "admin"; return nil })
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = o.svc.UpdateSession(ctx, "unknown", func(*redisservice.SessionData) error { return nil })
	require.NoError(t, err)
	require.False(t, ok)
	newID, ok, err := o.svc.RenewSessionID(ctx, id)
	require.NoError(t, err)
	require.True(t, ok)
	all, err := o.svc.UserSessions(ctx, "u1")
	require.NoError(t, err)
	require.Len(t, all, 1)
	require.Contains(t, all, newID)
	n, err := o.svc.DestroyUserSessions(ctx, "u1")
	require.NoError(t, err)
	require.Equal(t, int64(1), n)

	var names []string
	for _, s := range o.spans.Ended() {
		names = append(names, s.Name()+" "+outcome(s))
	}
	assert.Equal(t, []string{
		"redisservice.createsession ok",
		"redisservice.updatesessionactivity ok",
		"redisservice.getsession ok",
		"redisservice.getsession miss",
		"redisservice.updatesession ok",
		"redisservice.updatesession miss",
		"redisservice.renewsessionid ok",
		"redisservice.usersessions ok",
		"redisservice.destroyusersessions ok",
	}, names)
	assert.Len(t, roundTrips(o.named("redisservice.createsession")[0]), 2, "SET, index script")
	assert.Len(t, roundTrips(o.named("redisservice.updatesessionactivity")[0]), 2, "touch script, index script")
	assert.Equal(t, map[string]int64{
		"redisservice.op=createsession,redisservice.outcome=ok":         1,
		"redisservice.op=updatesessionactivity,redisservice.outcome=ok": 1,
		"redisservice.op=getsession,redisservice.outcome=ok":            1,
		"redisservice.op=getsession,redisservice.outcome=miss":          1,
		"redisservice.op=updatesession,redisservice.outcome=ok":         1,
		"redisservice.op=updatesession,redisservice.outcome=miss":       1,
		"redisservice.op=renewsessionid,redisservice.outcome=ok":        1,
		"redisservice.op=usersessions,redisservice.outcome=ok":          1,
		"redisservice.op=destroyusersessions,redisservice.outcome=ok":   1,
	}, o.sums(t, "redisservice.operations"))
}

// TestScopedFailure: a call of several round trips that fails is one
// span with status Error and one error, and the fast failures after it
// one fallback each; no status names the session's user.
func TestScopedFailure(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{Timeout: 300 * time.Millisecond, MaxRetries: -1})
	ctx := ctxT(t)
	id, err := redisservice.NewSessionID()
	require.NoError(t, err)
	o.mr.Close()
	data := redisservice.SessionData{UserID: "ada@example.com"}
	require.Error(t, o.svc.CreateSession(ctx, id, data, time.Hour))
	err = o.svc.CreateSession(ctx, id, data, time.Hour)
	require.ErrorIs(t, err, redisservice.ErrUnavailable)
	_, err = o.svc.DestroyUserSessions(ctx, "ada@example.com")
	require.ErrorIs(t, err, redisservice.ErrUnavailable)
	require.Contains(t, err.Error(), "ada@example.com", "the caller's error names the index")

	spans := o.spans.Ended()
	require.Len(t, spans, 3)
	for i, want := range []string{"error", "fallback", "fallback"} {
		assert.Equal(t, want, outcome(spans[i]), "span %d", i)
		assert.Equal(t, codes.Error, spans[i].Status().Code, "span %d", i)
		assert.NotEmpty(t, spans[i].Status().Description)
		assert.NotContains(t, spanText(spans[i]), "ada@example.com")
	}
	et, _ := spanAttr(spans[0], "error.type")
	assert.Equal(t, "connection", et)
	et, _ = spanAttr(spans[1], "error.type")
	assert.Equal(t, "unavailable", et)
	assert.Equal(t, map[string]int64{
		"redisservice.op=createsession,redisservice.outcome=error":          1,
		"redisservice.op=createsession,redisservice.outcome=fallback":       1,
		"redisservice.op=destroyusersessions,redisservice.outcome=fallback": 1,
	}, o.sums(t, "redisservice.operations"))
}

// TestCacheLoadError: a loader's failure is the call's error, with its
// status; a panic in it too, returned as an error.
func TestCacheLoadError(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	_, err := redisservice.Cache(ctx, o.svc, "c", time.Minute, func(context.Context) (int, error) { return 0, errors.New("db down") })
	require.Error(t, err)
	_, err = redisservice.Cache(ctx, o.svc, "p", time.Minute, func(context.Context) (int, error) { panic("boom") })
	require.ErrorContains(t, err, "panic: boom", "the loader's panic reaches the caller as an error")
	spans := o.named("redisservice.cache")
	require.Len(t, spans, 2)
	for _, s := range spans {
		assert.Equal(t, "error", outcome(s))
		assert.Equal(t, codes.Error, s.Status().Code)
	}
	assert.Contains(t, spans[0].Status().Description, "db down")
	et, _ := spanAttr(spans[0], "error.type")
	assert.Equal(t, "load", et)
	et, _ = spanAttr(spans[1], "error.type")
	assert.Equal(t, "panic", et)
	assert.Equal(t, int64(2), o.sums(t, "redisservice.operations")["redisservice.op=cache,redisservice.outcome=error"])
}

// TestLoaderCallsAreTheirOwn: the calls a Cache loader makes are
// operations of their own, children of the Cache span.
func TestLoaderCallsAreTheirOwn(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	_, err := o.svc.Set(ctx, "src", "7")
	require.NoError(t, err)
	_, err = redisservice.Cache(ctx, o.svc, "c", time.Minute, func(ctx context.Context) (string, error) {
		v, _, err := o.svc.Get(ctx, "src")
		return v, err
	})
	require.NoError(t, err)
	caches, gets := o.named("redisservice.cache"), o.named("redisservice.get")
	require.Len(t, caches, 1)
	require.Len(t, gets, 1)
	assert.Equal(t, caches[0].SpanContext().SpanID(), gets[0].Parent().SpanID())
	assert.Equal(t, int64(1), o.sums(t, "redisservice.operations")["redisservice.op=get,redisservice.outcome=ok"])
}

// TestOtherScopedCalls: InvalidatePattern, HealthCheck and a
// StaleWhileRevalidate refresh are one span each.
func TestOtherScopedCalls(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	for i := range 3 {
		_, err := o.svc.Set(ctx, fmt.Sprintf("p:%d", i), "v")
		require.NoError(t, err)
	}
	n, err := o.svc.InvalidatePattern(ctx, "p:*")
	require.NoError(t, err)
	require.Equal(t, int64(3), n)
	require.NoError(t, o.svc.HealthCheck(ctx))
	load := func(context.Context) (int, error) { return 1, nil }
	_, err = redisservice.Cache(ctx, o.svc, "s", time.Second, load, redisservice.StaleWhileRevalidate(time.Minute))
	require.NoError(t, err)
	o.mr.FastForward(1500 * time.Millisecond)
	_, err = redisservice.Cache(ctx, o.svc, "s", time.Second, load, redisservice.StaleWhileRevalidate(time.Minute))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(o.named("redisservice.cache.refresh")) == 1 }, 20*time.Second, 10*time.Millisecond)

	assert.Len(t, o.named("redisservice.invalidatepattern"), 1)
	assert.Len(t, o.named("redisservice.healthcheck"), 1)
	caches := o.named("redisservice.cache")
	require.Len(t, caches, 2)
	res, _ := spanAttr(caches[1], "redisservice.cache.result")
	assert.Equal(t, "stale", res)
	assert.Equal(t, caches[1].SpanContext().SpanID(), o.named("redisservice.cache.refresh")[0].Parent().SpanID(),
		"the refresh is a child of the call that found the value stale")
	ops := o.sums(t, "redisservice.operations")
	assert.Equal(t, int64(1), ops["redisservice.op=invalidatepattern,redisservice.outcome=ok"], "%v", ops)
	assert.Equal(t, int64(1), ops["redisservice.op=healthcheck,redisservice.outcome=ok"], "%v", ops)
	assert.Equal(t, int64(1), ops["redisservice.op=cache.refresh,redisservice.outcome=ok"], "%v", ops)
	assert.Equal(t, int64(2), ops["redisservice.op=cache,redisservice.outcome=miss"]+ops["redisservice.op=cache,redisservice.outcome=ok"], "%v", ops)
}

// TestScopedInvalidArgument: a call of several round trips refused
// before any is still one span and one count, an error of type invalid.
func TestScopedInvalidArgument(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	err := o.svc.CreateSession(ctxT(t), "sid", redisservice.SessionData{}, time.Hour)
	require.ErrorIs(t, err, redisservice.ErrInvalidArgument)
	spans := o.named("redisservice.createsession")
	require.Len(t, spans, 1)
	assert.Equal(t, "error", outcome(spans[0]))
	et, _ := spanAttr(spans[0], "error.type")
	assert.Equal(t, "invalid", et)
	assert.Empty(t, roundTrips(spans[0]))
	assert.Equal(t, map[string]int64{"redisservice.op=createsession,redisservice.outcome=error": 1}, o.sums(t, "redisservice.operations"))
}

// TestSharedLoadOneSpanPerCaller: callers sharing one load are one span
// and one count each.
func TestSharedLoadOneSpanPerCaller(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	load := func(context.Context) (int, error) {
		once.Do(func() { close(started) })
		<-release
		return 1, nil
	}
	errs := make(chan error, 2)
	go func() { _, err := redisservice.Cache(ctx, o.svc, "c", time.Minute, load); errs <- err }()
	<-started
	go func() { _, err := redisservice.Cache(ctx, o.svc, "c", time.Minute, load); errs <- err }()
	// The second caller has read the key missing while the first loads:
	// it joins the load (or, stalled past its end, rechecks and finds the
	// value), a miss either way.
	deadline := time.Now().Add(20 * time.Second)
	for o.sums(t, "redisservice.cache.requests")["redisservice.cache.result=miss"] < 2 {
		require.True(t, time.Now().Before(deadline), "the second caller never read the key")
		time.Sleep(time.Millisecond)
	}
	close(release)
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	require.Len(t, o.spans.Ended(), 2)
	assert.Len(t, o.named("redisservice.cache"), 2)
	ops := o.sums(t, "redisservice.operations")
	assert.Equal(t, int64(2), ops["redisservice.op=cache,redisservice.outcome=miss"]+ops["redisservice.op=cache,redisservice.outcome=ok"], "%v", ops)
}
