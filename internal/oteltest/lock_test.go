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
	"github.com/vevurn/redisservice/internal/testredis"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// TestLockOperations: each lock call is one operation under its own op,
// with one span, and, when Redis answered, one count of its lock outcome
// (redisservice.lock.requests, also on its span): a TryLock that takes
// the lock (acquired) or finds it held (held, a miss), a Refresh and an
// Unlock of the holder (refreshed, released) and of a holder whose lock
// was taken over (lost, a miss), a Lock that finds the key free
// (acquired) and one whose ctx ends while another holds it (held, an
// error: its ctx's). On miniredis, a real Redis and a cluster.
func TestLockOperations(t *testing.T) {
	t.Parallel()
	testredis.ForEach(t, "oteltest:", func(t *testing.T, b *testredis.Backend) {
		o := newObserved(t, redisservice.Options{Client: b.Client, KeyPrefix: b.Prefix})
		ctx := ctxT(t)
		// tries cancels the ctx armed with it once a script has answered,
		// so that a Lock's wait, not its round trip, sees the ctx end.
		tries := &scripts{}
		o.svc.Client().AddHook(tries)

		l, err := o.svc.TryLock(ctx, "stock:A-1", time.Minute)
		require.NoError(t, err)
		_, err = o.svc.TryLock(ctx, "stock:A-1", time.Minute)
		require.ErrorIs(t, err, redisservice.ErrLockHeld)
		require.NoError(t, l.Refresh(ctx, time.Minute))
		require.NoError(t, l.Unlock(ctx))
		l, err = o.svc.Lock(ctx, "stock:A-1", time.Minute)
		require.NoError(t, err)
		require.Equal(t, int64(2), l.Token())
		waiting, cancel := context.WithCancel(ctx)
		tries.cancelAfter(cancel)
		_, err = o.svc.Lock(waiting, "stock:A-1", time.Minute)
		require.ErrorIs(t, err, context.Canceled)

		// The old holder's lock expires, and another takes the key.
		old, err := o.svc.TryLock(ctx, "stock:B-1", 200*time.Millisecond)
		require.NoError(t, err)
		b.Pass(300 * time.Millisecond)
		b.WaitFor(t, "the old holder's lock to expire", func() bool {
			n, err := b.Client.Exists(ctx, b.Raw("lock:{stock:B-1}")).Result()
			return err == nil && n == 0
		})
		taker, err := o.svc.TryLock(ctx, "stock:B-1", time.Minute)
		require.NoError(t, err)
		require.ErrorIs(t, old.Refresh(ctx, time.Minute), redisservice.ErrLockLost)
		require.ErrorIs(t, old.Unlock(ctx), redisservice.ErrLockLost)
		require.NoError(t, taker.Unlock(ctx))

		assert.Equal(t, map[string]int64{
			"redisservice.lock.outcome=acquired,redisservice.op=trylock":      3,
			"redisservice.lock.outcome=held,redisservice.op=trylock":          1,
			"redisservice.lock.outcome=refreshed,redisservice.op=refreshlock": 1,
			"redisservice.lock.outcome=lost,redisservice.op=refreshlock":      1,
			"redisservice.lock.outcome=released,redisservice.op=unlock":       2,
			"redisservice.lock.outcome=lost,redisservice.op=unlock":           1,
			"redisservice.lock.outcome=acquired,redisservice.op=lock":         1,
			"redisservice.lock.outcome=held,redisservice.op=lock":             1,
		}, o.sums(t, "redisservice.lock.requests"))
		assert.Equal(t, map[string]int64{
			"redisservice.op=trylock,redisservice.outcome=ok":       3,
			"redisservice.op=trylock,redisservice.outcome=miss":     1,
			"redisservice.op=refreshlock,redisservice.outcome=ok":   1,
			"redisservice.op=refreshlock,redisservice.outcome=miss": 1,
			"redisservice.op=unlock,redisservice.outcome=ok":        2,
			"redisservice.op=unlock,redisservice.outcome=miss":      1,
			"redisservice.op=lock,redisservice.outcome=ok":          1,
			"redisservice.op=lock,redisservice.outcome=error":       1,
		}, o.sums(t, "redisservice.operations"))

		// One span per call, in the order of the calls, each with the
		// outcome of its call; only the Lock whose ctx ended is an error.
		var got []string
		for _, s := range o.spans.Ended() {
			lock, _ := spanAttr(s, "redisservice.lock.outcome")
			out, _ := spanAttr(s, "redisservice.outcome")
			got = append(got, s.Name()+" "+lock+" "+out+" "+s.Status().Code.String())
		}
		assert.Equal(t, []string{
			"redisservice.trylock acquired ok Unset",
			"redisservice.trylock held miss Unset",
			"redisservice.refreshlock refreshed ok Unset",
			"redisservice.unlock released ok Unset",
			"redisservice.lock acquired ok Unset",
			"redisservice.lock held error Error",
			"redisservice.trylock acquired ok Unset",
			"redisservice.trylock acquired ok Unset",
			"redisservice.refreshlock lost miss Unset",
			"redisservice.unlock lost miss Unset",
			"redisservice.unlock released ok Unset",
		}, got)
	})
}

// scripts counts the EVALSHAs a client sends (one per try of a lock;
// a script not loaded yet is sent again as EVAL), and calls the function
// set by cancelAfter once, when the next one has answered. Add it with
// rdb.AddHook.
type scripts struct {
	n      atomic.Int64
	cancel atomic.Pointer[context.CancelFunc]
}

// cancelAfter arms cancel: it runs when the next EVALSHA has answered.
func (h *scripts) cancelAfter(cancel context.CancelFunc) { h.cancel.Store(&cancel) }

func (h *scripts) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scripts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "evalsha" {
			return next(ctx, cmd)
		}
		h.n.Add(1)
		err := next(ctx, cmd)
		if cancel := h.cancel.Swap(nil); cancel != nil {
			(*cancel)()
		}
		return err
	}
}

func (h *scripts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestLockThatWaitsIsOneOperation: a Lock that tries several times
// before the holder lets go is one operation, one lock outcome
// (acquired) and one span, each try an event of it.
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
	// The tries that found the lock held are not outcomes of their own.
	assert.Equal(t, map[string]int64{
		"redisservice.lock.outcome=acquired,redisservice.op=trylock": 1,
		"redisservice.lock.outcome=released,redisservice.op=unlock":  1,
		"redisservice.lock.outcome=acquired,redisservice.op=lock":    1,
	}, o.sums(t, "redisservice.lock.requests"))
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
