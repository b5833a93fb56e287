package redisservice

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCacheFleetLoadsOnce(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		const services, callers = 8, 50
		fleet := make([]*Service, services)
		for i := range fleet {
			fleet[i] = b.service(t, Options{})
		}
		ctx := ctxT(t)
		var loads atomic.Int32
		load := func(context.Context) (string, error) {
			loads.Add(1)
			time.Sleep(200 * time.Millisecond) // a slow database
			return "v", nil
		}
		var wg sync.WaitGroup
		for _, s := range fleet {
			for range callers {
				wg.Go(func() {
					v, err := Cache(ctx, s, "cold", time.Minute, load)
					assert.NoError(t, err)
					assert.Equal(t, "v", v)
				})
			}
		}
		wg.Wait()
		assert.EqualValues(t, 1, loads.Load(), "%d Services x %d callers on a cold key ran the loader", services, callers)
		assert.EqualValues(t, 0, b.client.Exists(ctx, b.raw(lockKey("cold"))).Val(), "the lock is released")

		// WithoutFleetLock: each Service loads.
		loads.Store(0)
		for _, s := range fleet {
			wg.Go(func() {
				_, err := Cache(ctx, s, "cold2", time.Minute, load, WithoutFleetLock())
				assert.NoError(t, err)
			})
		}
		wg.Wait()
		assert.Greater(t, loads.Load(), int32(1), "without the lock the Services load on their own")
	})
}

func TestCacheFleetHolderFails(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		holder, waiter := b.service(t, Options{}), b.service(t, Options{})
		ctx := ctxT(t)
		started := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			_, err := Cache(ctx, holder, "k", time.Minute, func(context.Context) (string, error) {
				close(started)
				time.Sleep(100 * time.Millisecond)
				return "", errBoom
			})
			assert.ErrorIs(t, err, errBoom)
		})
		<-started
		start := time.Now()
		v, err := Cache(ctx, waiter, "k", time.Minute, func(context.Context) (string, error) { return "mine", nil })
		require.NoError(t, err)
		assert.Equal(t, "mine", v, "a waiter loads itself when the holder fails")
		assert.Less(t, time.Since(start), 5*time.Second, "the wait; without the holder's release, fleetLockTTL (10s)")
		wg.Wait()

		// A lock left by a holder that died: the waiter loads once it expires.
		// (Only the wait's bound is checked here; fleetLockTTL is long.)
		require.NoError(t, b.client.Set(ctx, b.raw(lockKey("dead")), "1", 300*time.Millisecond).Err())
		if !b.real() {
			go func() { time.Sleep(50 * time.Millisecond); b.mr.FastForward(time.Second) }()
		}
		v, err = Cache(ctx, waiter, "dead", time.Minute, func(context.Context) (string, error) { return "after", nil })
		require.NoError(t, err)
		assert.Equal(t, "after", v)
	})
}

// countingHook counts the round trips and commands a client sends.
type countingHook struct{ trips, cmds atomic.Int32 }

func (h *countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.trips.Add(1)
		h.cmds.Add(1)
		return next(ctx, cmd)
	}
}

func (h *countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.trips.Add(1)
		h.cmds.Add(int32(len(cmds)))
		return next(ctx, cmds)
	}
}

// TestCacheFleetLockCost: the fleet lock costs a miss two commands and no
// round trip, as WithoutFleetLock's doc says.
func TestCacheFleetLockCost(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		h := new(countingHook)
		b.client.AddHook(h)
		ctx := ctxT(t)
		miss := func(key string, opts ...CacheOption) (trips, cmds int32) {
			t0, c0 := h.trips.Load(), h.cmds.Load()
			v, err := Cache(ctx, s, key, time.Minute, func(context.Context) (string, error) { return "v", nil }, opts...)
			require.NoError(t, err)
			require.Equal(t, "v", v)
			return h.trips.Load() - t0, h.cmds.Load() - c0
		}
		miss("warm") // the connection's own handshake goes through the hooks too
		lockTrips, lockCmds := miss("locked")
		trips, cmds := miss("unlocked", WithoutFleetLock())
		assert.EqualValues(t, 3, lockTrips, "round trips of a miss: GET, the second read, the store")
		assert.Equal(t, lockTrips, trips, "round trips saved by WithoutFleetLock")
		assert.Equal(t, lockCmds-2, cmds, "commands saved by WithoutFleetLock")
	})
}
