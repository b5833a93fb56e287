package redisservice

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests of this file cover one load: who runs it, who waits for it,
// what bounds it, and what a panicking or re-entrant loader does.

// TestCacheErrorText: the package name appears once in a loader's error.
func TestCacheErrorText(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	_, err := Cache(ctxT(t), s, "k", time.Minute, func(context.Context) (string, error) { return "", ErrNotFound })
	require.ErrorIs(t, err, ErrNotFound)
	assert.Equal(t, `redisservice: cache "k": load: not found`, err.Error())
	_, err = Cache(ctxT(t), s, "k", time.Minute, func(context.Context) (string, error) { return "", errors.New("db down") })
	assert.Equal(t, `redisservice: cache "k": load: db down`, err.Error())
}

// TestCacheHashAtKey: a key holding a hash is a miss that loads and
// overwrites it at once, not after waiting for its own fleet lock.
func TestCacheHashAtKey(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		require.NoError(t, b.client.HSet(ctx, b.raw("h"), "f", "v").Err())
		start := time.Now()
		v, err := Cache(ctx, s, "h", time.Minute, func(context.Context) (string, error) { return "x", nil })
		require.NoError(t, err)
		assert.Equal(t, "x", v)
		assert.Less(t, time.Since(start), fleetLockTTL/2, "a miss over a hash waited for its own fleet lock")
		assert.Equal(t, `"x"`, b.client.Get(ctx, b.raw("h")).Val(), "the hash is overwritten")
		assert.EqualValues(t, 0, b.client.Exists(ctx, b.raw(lockKey("h"))).Val(), "the lock is released")
		assert.Zero(t, s.Stats().Errors, "a value of another type is a miss, not a failure")
	})
}
