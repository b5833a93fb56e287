package redisservice

import (
	"context"
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
