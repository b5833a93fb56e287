package oteltest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// TestCacheStaleAndNotFoundResults: a value served past its TTL under
// StaleWhileRevalidate counts as stale, a remembered ErrNotFound as
// not_found.
func TestCacheStaleAndNotFoundResults(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	load := func(context.Context) (int, error) { return 42, nil }
	_, err := redisservice.Cache(ctx, o.svc, "s", time.Second, load, redisservice.StaleWhileRevalidate(time.Minute))
	require.NoError(t, err)
	o.mr.FastForward(1500 * time.Millisecond)
	v, err := redisservice.Cache(ctx, o.svc, "s", time.Second, load, redisservice.StaleWhileRevalidate(time.Minute))
	require.NoError(t, err)
	require.Equal(t, 42, v)

	missing := func(context.Context) (int, error) { return 0, fmt.Errorf("db: %w", redisservice.ErrNotFound) }
	for range 2 {
		_, err := redisservice.Cache(ctx, o.svc, "n", time.Minute, missing, redisservice.NotFoundTTL(time.Minute))
		require.ErrorIs(t, err, redisservice.ErrNotFound)
	}
	sums := o.sums(t, "redisservice.cache.requests")
	assert.Equal(t, int64(1), sums["redisservice.cache.result=stale"], "%v", sums)
	assert.Equal(t, int64(1), sums["redisservice.cache.result=not_found"], "%v", sums)
	assert.Equal(t, int64(2), sums["redisservice.cache.result=miss"], "%v", sums)
}
