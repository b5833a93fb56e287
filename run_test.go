package redisservice

import (
	"context"
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRun: commands sent through Run land under the key prefix via Key, a
// miss comes back as redis.Nil, a failure is wrapped and counted, and
// after Close fn is not called.
func TestRun(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		require.NoError(t, s.Run(ctx, "ext.set", "k", func(ctx context.Context, rdb redis.UniversalClient) error {
			return rdb.Set(ctx, s.Key("k"), "v", 0).Err()
		}))
		assert.Equal(t, "v", b.client.Get(ctx, b.raw("k")).Val(), "the value under the prefix")
		v, found, err := s.Get(ctx, "k")
		require.NoError(t, err)
		assert.True(t, found)
		assert.Equal(t, "v", v)

		err = s.Run(ctx, "ext.get", "absent", func(ctx context.Context, rdb redis.UniversalClient) error {
			return rdb.Get(ctx, s.Key("absent")).Err()
		})
		assert.Equal(t, redis.Nil, err, "a miss is redis.Nil, unwrapped") //nolint:testifylint // identity, as callers test it

		before := s.Stats().Errors
		err = s.Run(ctx, "ext.hget", "<redacted>", func(ctx context.Context, rdb redis.UniversalClient) error {
			return rdb.HGet(ctx, s.Key("k"), "f").Err() // WRONGTYPE
		})
		require.Error(t, err)
		assert.Contains(t, err.Error(), `redisservice: ext.hget "<redacted>": WRONGTYPE`)
		assert.Equal(t, before+1, s.Stats().Errors)

		require.NoError(t, s.Close())
		called := false
		err = s.Run(ctx, "ext.get", "k", func(context.Context, redis.UniversalClient) error {
			called = true
			return errors.New("unreachable")
		})
		assert.ErrorIs(t, err, ErrClosed)
		assert.False(t, called, "fn after Close")
	})
}
