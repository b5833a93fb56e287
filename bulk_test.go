package redisservice

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBulk(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)

		// Enough keys to land in every slot range of a 3-master cluster.
		values := map[string]any{}
		var keys []string
		for i := range 50 {
			k := "bulk:" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
			values[k] = i
			keys = append(keys, k)
		}
		require.NoError(t, s.MSet(ctx, values), "MSet")
		got, err := s.MGet(ctx, append(keys, "bulk:missing")...)
		require.NoError(t, err, "MGet")
		require.Len(t, got, len(keys), "MGet")
		assert.NotContains(t, got, "bulk:missing", "MGet returned a missing key")
		assert.Equal(t, "7", got[keys[7]], "MGet[%q]", keys[7])

		require.NoError(t, s.MSet(ctx, map[string]any{"t1": "a", "t2": "b"}, WithTTL(200*time.Millisecond)), "MSet with TTL")
		for _, k := range []string{"t1", "t2"} {
			d, _ := s.TTL(ctx, k)
			assert.True(t, d > 0 && d <= 200*time.Millisecond, "TTL(%s) after MSet(WithTTL(200ms)) = %v", k, d)
		}

		n, err := s.Del(ctx, append(keys, "bulk:missing")...)
		assert.NoError(t, err, "Del")
		assert.Equal(t, int64(len(keys)), n, "Del")
		m, err := s.MGet(ctx)
		assert.NoError(t, err, "MGet()")
		assert.NotNil(t, m, "MGet(); want empty map")
		assert.Empty(t, m, "MGet(); want empty map")
		n, err = s.Del(ctx)
		assert.NoError(t, err, "Del()")
		assert.Zero(t, n, "Del()")
		assert.NoError(t, s.MSet(ctx, nil), "MSet(nil)")
	})
}

// TestMGetSkipsValuesThatAreNotStrings: a key holding a hash or a list is
// absent from MGet's map, as MGET itself answers nil for it, on a cluster
// (one GET per key, which answers WRONGTYPE) as on a single node.
func TestMGetSkipsValuesThatAreNotStrings(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		var keys []string
		want := map[string]string{}
		for i := range 20 { // spread over the slots of every master
			k := "mget:" + strconv.Itoa(i)
			keys = append(keys, k)
			switch i % 3 {
			case 0:
				require.NoError(t, s.HSet(ctx, k, "f", "v"))
			case 1:
				require.NoError(t, b.client.RPush(ctx, b.raw(k), "x").Err())
			default:
				_, err := s.Set(ctx, k, i)
				require.NoError(t, err)
				want[k] = strconv.Itoa(i)
			}
		}
		got, err := s.MGet(ctx, append(keys, "mget:missing")...)
		require.NoError(t, err)
		assert.Equal(t, want, got)
	})
}
