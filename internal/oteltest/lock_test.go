package oteltest_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// TestLockOperations: each lock call is one operation under its own op,
// with one span: TryLock, Refresh, Unlock, and a Lock that finds the key
// free.
func TestLockOperations(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	l, err := o.svc.TryLock(ctx, "stock:A-1", time.Minute)
	require.NoError(t, err)
	require.NoError(t, l.Refresh(ctx, time.Minute))
	require.NoError(t, l.Unlock(ctx))
	l, err = o.svc.Lock(ctx, "stock:A-1", time.Minute)
	require.NoError(t, err)
	require.Equal(t, int64(2), l.Token())

	assert.Equal(t, map[string]int64{
		"redisservice.op=trylock,redisservice.outcome=ok":     1,
		"redisservice.op=refreshlock,redisservice.outcome=ok": 1,
		"redisservice.op=unlock,redisservice.outcome=ok":      1,
		"redisservice.op=lock,redisservice.outcome=ok":        1,
	}, o.sums(t, "redisservice.operations"))
	var names []string
	for _, s := range o.spans.Ended() {
		names = append(names, s.Name())
	}
	assert.Equal(t, []string{"redisservice.trylock", "redisservice.refreshlock", "redisservice.unlock", "redisservice.lock"}, names)
}

// scripts counts the EVALSHAs a client sends (one per try of a lock;
// a script not loaded yet is sent again as EVAL). Add it with
// rdb.AddHook.
type scripts struct{ n atomic.Int64 }

func (h *scripts) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scripts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "evalsha" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (h *scripts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestLockThatWaitsIsOneOperation: a Lock that tries several times
// before the holder lets go is one operation and one span, each try an
// event of it.
func TestLockThatWaitsIsOneOperation(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	sent := &scripts{}
	o.svc.Client().AddHook(sent)
	holder, err := o.svc.TryLock(ctx, "stock:A-1", time.Minute)
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		_, err := o.svc.Lock(ctx, "stock:A-1", time.Minute)
		got <- err
	}()
	// The TryLock, then three tries of Lock.
	deadline := time.Now().Add(10 * time.Second)
	for sent.n.Load() < 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	require.GreaterOrEqual(t, sent.n.Load(), int64(4), "scripts sent: the TryLock and three tries of Lock")
	require.NoError(t, holder.Unlock(ctx))
	require.NoError(t, <-got)

	assert.Equal(t, map[string]int64{
		"redisservice.op=trylock,redisservice.outcome=ok": 1,
		"redisservice.op=unlock,redisservice.outcome=ok":  1,
		"redisservice.op=lock,redisservice.outcome=ok":    1,
	}, o.sums(t, "redisservice.operations"))
	var locks []sdktrace.ReadOnlySpan
	for _, s := range o.spans.Ended() {
		if s.Name() == "redisservice.lock" {
			locks = append(locks, s)
		}
	}
	require.Len(t, locks, 1, "spans of the Lock call")
	tries := 0
	for _, e := range locks[0].Events() {
		if e.Name == "redisservice.round_trip" {
			tries++
		}
	}
	assert.GreaterOrEqual(t, tries, 4, "the Lock's tries, as events of its span")
}
