package redisservice

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCacheNotFoundTTL(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		// d outlasts the calls below by far, on a loaded machine too.
		const d = 3 * time.Second
		var loads atomic.Int32
		missing := func(context.Context) (string, error) {
			loads.Add(1)
			return "", fmt.Errorf("db: product 42: %w", ErrNotFound)
		}
		for i := range 3 {
			v, err := Cache(ctx, s, "product:42", time.Minute, missing, NotFoundTTL(d))
			assert.Empty(t, v)
			require.ErrorIs(t, err, ErrNotFound, "call %d", i)
		}
		assert.EqualValues(t, 1, loads.Load(), "loads while the absence is remembered")

		// Other readers see the key missing, not a value.
		var dst map[string]any
		found, err := s.GetJSON(ctx, "product:42", &dst)
		assert.False(t, found)
		assert.NoError(t, err, "GetJSON of a remembered absence")
		n, err := s.Exists(ctx, "product:42")
		require.NoError(t, err)
		assert.False(t, n)

		// Without the option nothing is remembered, and nothing is read.
		_, err = Cache(ctx, s, "product:43", time.Minute, missing)
		require.ErrorIs(t, err, ErrNotFound)
		_, err = Cache(ctx, s, "product:43", time.Minute, missing)
		require.ErrorIs(t, err, ErrNotFound)
		assert.EqualValues(t, 3, loads.Load(), "each call loads without NotFoundTTL")

		// After d the loader runs again.
		b.pass(d + 50*time.Millisecond)
		b.waitFor(t, "the absence is forgotten", func() bool {
			_, err := Cache(ctx, s, "product:42", time.Minute, missing, NotFoundTTL(d))
			return errors.Is(err, ErrNotFound) && loads.Load() == 4
		})

		// A value written to the key wins over the marker, and a value
		// stored through Cache removes it.
		require.NoError(t, b.client.Set(ctx, b.raw("product:42"), `"written"`, time.Minute).Err())
		v, err := Cache(ctx, s, "product:42", time.Minute, missing, NotFoundTTL(d))
		require.NoError(t, err)
		assert.Equal(t, "written", v)
		_, err = Cache(ctx, s, "product:44", time.Minute, missing, NotFoundTTL(time.Minute))
		require.ErrorIs(t, err, ErrNotFound)
		require.NoError(t, b.client.Del(ctx, b.raw("product:44")).Err())
		_, err = s.Del(ctx, "product:44:redisservice-not-found")
		require.NoError(t, err)
		v, err = Cache(ctx, s, "product:44", time.Minute, func(context.Context) (string, error) { return "found", nil }, NotFoundTTL(time.Minute))
		require.NoError(t, err)
		assert.Equal(t, "found", v)
		assert.EqualValues(t, 0, b.client.Exists(ctx, b.raw("product:44:redisservice-not-found")).Val())

		_, err = Cache(ctx, s, "k", time.Minute, missing, NotFoundTTL(time.Microsecond))
		assert.ErrorIs(t, err, ErrInvalidTTL)
	})
}

func TestCacheStaleWhileRevalidate(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		for _, local := range []bool{false, true} {
			if local && !b.real() {
				continue
			}
			t.Run(fmt.Sprintf("local=%v", local), func(t *testing.T) {
				var s *Service
				if local {
					s = localService(t, b, 100)
				} else {
					s = b.service(t, Options{})
				}
				ctx := ctxT(t)
				key := fmt.Sprintf("swr:%v", local)
				// ttl is long enough that the refreshed value cannot turn stale
				// again before the calls below see it, on a loaded machine too.
				const ttl, d, slow = 2 * time.Second, 5 * time.Second, time.Second
				var loads atomic.Int32
				load := func(context.Context) (string, error) {
					n := loads.Add(1)
					if n > 1 {
						time.Sleep(slow) // a slow database
					}
					return fmt.Sprintf("v%d", n), nil
				}
				v, err := Cache(ctx, s, key, ttl, load, StaleWhileRevalidate(d))
				require.NoError(t, err)
				require.Equal(t, "v1", v)
				pttl := b.client.PTTL(ctx, b.raw(key)).Val()
				assert.Greater(t, pttl, d, "the key is kept for ttl+d")
				assert.LessOrEqual(t, pttl, ttl+d)
				var plain string
				found, err := s.GetJSON(ctx, key, &plain)
				require.NoError(t, err)
				assert.True(t, found)
				assert.Equal(t, "v1", plain, "the stored value is plain JSON")
				if local {
					warmLocalWith(t, s, key, "v1", ttl, d)
				}

				b.pass(ttl + 50*time.Millisecond)
				// Past ttl: 20 callers get the stale value at once, and one
				// refresh runs.
				var wg sync.WaitGroup
				for range 20 {
					wg.Go(func() {
						start := time.Now()
						v, err := Cache(ctx, s, key, ttl, load, StaleWhileRevalidate(d))
						assert.NoError(t, err)
						assert.Equal(t, "v1", v, "a stale value")
						assert.Less(t, time.Since(start), slow/2, "a stale value comes at once, not after the load")
					})
				}
				wg.Wait()
				// Wait for the refresh to store v2 and end (and the local copy
				// of v1 to go) without calling Cache meanwhile: a read of v1 in
				// flight as the refresh ends would start another.
				waitFor(t, "the refresh stores v2", func() bool { return b.client.Get(ctx, b.raw(key)).Val() == `"v2"` })
				waitFor(t, "the refresh ends", func() bool {
					return !loading(s, keyOf[string](key))
				})
				if local {
					waitFor(t, "the local copy of v1 dropped", func() bool { return !localHas[string](s, key) })
				}
				v, err = Cache(ctx, s, key, ttl, load, StaleWhileRevalidate(d))
				require.NoError(t, err)
				assert.Equal(t, "v2", v, "the refreshed value")
				assert.EqualValues(t, 2, loads.Load(), "one background refresh for every stale read")
				assert.Greater(t, b.client.PTTL(ctx, b.raw(key)).Val(), d, "the refresh keeps the key ttl+d")
			})
		}
	})
}

// warmLocalWith reads key until the local tier holds it.
func warmLocalWith(t testing.TB, s *Service, key, want string, ttl, d time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		v, err := Cache(ctxT(t), s, key, ttl, func(context.Context) (string, error) { return "unexpected", nil }, StaleWhileRevalidate(d))
		return err == nil && v == want && localHas[string](s, key)
	}, ttl/2, time.Millisecond, "the local tier holds %q", key)
}
