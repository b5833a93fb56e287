package redisservice

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHash(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		for f, v := range map[string]any{"name": "Ada", "visits": 3} {
			require.NoError(t, s.HSet(ctx, "h", f, v), "HSet(h, %s)", f)
		}
		v, found, err := s.HGet(ctx, "h", "visits")
		require.NoError(t, err)
		assert.True(t, found, "HGet(h, visits) found")
		assert.Equal(t, "3", v, "HGet(h, visits)")

		v, found, err = s.HGet(ctx, "h", "nope")
		require.NoError(t, err)
		assert.False(t, found, "HGet(h, nope) found")
		assert.Empty(t, v, "HGet(h, nope)")

		m, err := s.HGetAll(ctx, "h")
		require.NoError(t, err)
		assert.Equal(t, map[string]string{"name": "Ada", "visits": "3"}, m, "HGetAll(h)")

		m, err = s.HGetAll(ctx, "missing")
		require.NoError(t, err)
		assert.NotNil(t, m, "HGetAll(missing) must not be nil")
		assert.Empty(t, m, "HGetAll(missing)")

		n, err := s.HDel(ctx, "h", "name", "nope")
		require.NoError(t, err)
		assert.Equal(t, int64(1), n, "HDel(h, name, nope)")

		mustSet(t, s, "str", "x")
		m, err = s.HGetAll(ctx, "str")
		assert.Error(t, err, "HGetAll(string key) must report WRONGTYPE")
		assert.NotNil(t, m, "HGetAll(string key) must not be nil")
		assert.Empty(t, m, "HGetAll(string key)")
	})
}
