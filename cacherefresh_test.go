package redisservice

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests of this file cover StaleWhileRevalidate's background refresh.

// stale stores v at key through Cache with StaleWhileRevalidate(d) and
// then shortens the key's life to d, so that the next read finds it stale.
func stale(t testing.TB, s *Service, b *backend, key, v string, d time.Duration) {
	t.Helper()
	ctx := ctxT(t)
	got, err := Cache(ctx, s, key, time.Minute, func(context.Context) (string, error) { return v, nil }, StaleWhileRevalidate(d))
	require.NoError(t, err)
	require.Equal(t, v, got)
	require.NoError(t, b.client.PExpire(ctx, b.raw(key), d).Err())
}

// TestCacheRefreshLoaderPanic: a loader that panics in a background
// refresh is logged and crashes nothing; it releases the fleet lock and
// the refresh's mark, so that the next stale read refreshes again.
func TestCacheRefreshLoaderPanic(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		logs := new(syncBuffer)
		s := b.service(t, Options{Logger: jsonLogger(logs)})
		ctx := ctxT(t)
		const d = time.Hour
		stale(t, s, b, "k", "old", d)
		v, err := Cache(ctx, s, "k", time.Minute, func(context.Context) (string, error) { panic("refresh kaboom") }, StaleWhileRevalidate(d))
		require.NoError(t, err)
		assert.Equal(t, "old", v, "the stale value")
		waitLog(t, logs, "refresh kaboom")
		waitIdle(t, s, keyOf[string]("k"))
		assert.EqualValues(t, 0, b.client.Exists(ctx, b.raw(lockKey("k"))).Val(), "the fleet lock is released")

		v, err = Cache(ctx, s, "k", time.Minute, func(context.Context) (string, error) { return "new", nil }, StaleWhileRevalidate(d))
		require.NoError(t, err)
		assert.Equal(t, "old", v, "still stale: the panicking refresh stored nothing")
		require.Eventually(t, func() bool {
			v, err := Cache(ctx, s, "k", time.Minute, func(context.Context) (string, error) { return "unexpected", nil }, StaleWhileRevalidate(d))
			return err == nil && v == "new"
		}, 10*time.Second, time.Millisecond, "the next stale read refreshes again")
	})
}

// waitIdle waits until no load of k is in flight.
func waitIdle(t testing.TB, s *Service, k flightKey) {
	t.Helper()
	require.Eventually(t, func() bool { return !loading(s, k) }, 10*time.Second, time.Millisecond, "the load of %q ends", k.key)
}

// TestCacheStaleNotFound: with NotFoundTTL, a refresh whose loader reports
// the row gone removes the stale value: later calls get ErrNotFound from
// the marker, without loading, instead of the stale value and a load each.
func TestCacheStaleNotFound(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		const d = time.Hour
		stale(t, s, b, "k", "old", d)
		var loads atomic.Int32
		gone := func(context.Context) (string, error) {
			loads.Add(1)
			return "", fmt.Errorf("db: row deleted: %w", ErrNotFound)
		}
		opts := []CacheOption{StaleWhileRevalidate(d), NotFoundTTL(time.Minute)}
		v, err := Cache(ctx, s, "k", time.Minute, gone, opts...)
		require.NoError(t, err)
		assert.Equal(t, "old", v, "the stale value while the refresh runs")
		waitIdle(t, s, keyOf[string]("k"))
		require.EqualValues(t, 1, loads.Load())
		for i := range 5 {
			v, err := Cache(ctx, s, "k", time.Minute, gone, opts...)
			assert.ErrorIs(t, err, ErrNotFound, "call %d after the row went", i)
			assert.Empty(t, v, "call %d after the row went", i)
		}
		assert.EqualValues(t, 1, loads.Load(), "loads after the refresh remembered the absence")
		assert.EqualValues(t, 0, b.client.Exists(ctx, b.raw("k")).Val(), "the stale value is removed")
	})
}

// TestCacheRefreshDropsStaleLocalCopy: a refresh drops the stale copy in
// the local tier before its mark is cleared, so that no call between the
// two starts another load. The tier here is in use without tracking, so
// only the refresh itself removes copies: the interleaving is exact.
func TestCacheRefreshDropsStaleLocalCopy(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		useLocalTier(t, s, 100)
		ctx := ctxT(t)
		const d = time.Hour
		k := keyOf[string]("k")
		stale(t, s, b, "k", "old", d)
		putLocal(s, "k", "old", d, d) // a copy that is stale at once
		require.True(t, localHas[string](s, "k"))

		var loads atomic.Int32
		release := make(chan struct{})
		load := func(context.Context) (string, error) {
			loads.Add(1)
			<-release
			return "new", nil
		}
		// When the refresh's mark is cleared, a call must find the copy gone
		// and the new value in Redis, and start nothing.
		var atForget struct {
			sync.Once
			v       string
			err     error
			hadCopy bool
			loading bool
		}
		forgotten := make(chan struct{})
		onForget(s, func(fk flightKey) {
			if fk != k {
				return
			}
			atForget.Do(func() {
				atForget.hadCopy = localHas[string](s, "k")
				atForget.v, atForget.err = Cache(ctx, s, "k", time.Minute, load, StaleWhileRevalidate(d))
				atForget.loading = loading(s, k)
				close(forgotten)
			})
		})
		v, err := Cache(ctx, s, "k", time.Minute, load, StaleWhileRevalidate(d))
		require.NoError(t, err)
		assert.Equal(t, "old", v, "the stale local copy")
		// Calls while the refresh runs get the stale copy and start nothing.
		for range 10 {
			v, err := Cache(ctx, s, "k", time.Minute, load, StaleWhileRevalidate(d))
			require.NoError(t, err)
			assert.Equal(t, "old", v)
		}
		close(release)
		select {
		case <-forgotten:
		case <-time.After(10 * time.Second):
			require.FailNow(t, "the refresh's mark is never cleared")
		}
		require.EqualValues(t, 1, loads.Load())
		assert.False(t, atForget.hadCopy, "the stale local copy outlived the refresh's mark")
		require.NoError(t, atForget.err)
		assert.Equal(t, "new", atForget.v, "a call as the mark is cleared")
		assert.False(t, atForget.loading, "a call as the mark is cleared started a load")

		// A call that saw the stale copy before the refresh ended and asks
		// for a refresh after it: the refresh finds the new value and loads
		// nothing.
		refreshNow(ctx, s, "k", time.Minute, load, StaleWhileRevalidate(d))
		waitIdle(t, s, k)
		v, err = Cache(ctx, s, "k", time.Minute, load, StaleWhileRevalidate(d))
		require.NoError(t, err)
		assert.Equal(t, "new", v)
		assert.EqualValues(t, 1, loads.Load(), "loads for one stale period")
	})
}

// TestCacheStaleLocalOneLoad: with the local tier kept coherent by
// tracking, a stale period with callers hammering the key costs one load.
func TestCacheStaleLocalOneLoad(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		if !b.real() {
			t.Skip("miniredis has no CLIENT TRACKING: TestCacheRefreshDropsStaleLocalCopy covers the tier without it")
		}
		s := localService(t, b, 100)
		ctx := ctxT(t)
		const ttl, d = time.Second, time.Hour
		var loads atomic.Int32
		load := func(context.Context) (string, error) {
			n := loads.Add(1)
			return fmt.Sprintf("v%d", n), nil
		}
		_, err := Cache(ctx, s, "k", ttl, load, StaleWhileRevalidate(d))
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			_, err := Cache(ctx, s, "k", ttl, load, StaleWhileRevalidate(d))
			return err == nil && localHas[string](s, "k")
		}, 10*time.Second, time.Millisecond, "the local tier holds the value")
		b.pass(ttl) // the copy in the tier turns stale
		const callers = 8
		var wg sync.WaitGroup
		var sawNew atomic.Int32
		for range callers {
			wg.Go(func() {
				seen := 0
				deadline := time.Now().Add(10 * time.Second)
				// Each caller reads until it has seen the new value 200 times.
				for seen < 200 && time.Now().Before(deadline) {
					v, err := Cache(ctx, s, "k", time.Minute, load, StaleWhileRevalidate(d))
					assert.NoError(t, err)
					if v == "v2" {
						seen++
					}
				}
				if seen == 200 {
					sawNew.Add(1)
				}
			})
		}
		wg.Wait()
		assert.EqualValues(t, callers, sawNew.Load(), "callers that saw the refreshed value")
		assert.EqualValues(t, 2, loads.Load(), "loads: the first, and one for the stale period")
	})
}
