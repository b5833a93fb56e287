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
		if err := s.MSet(ctx, values); err != nil {
			t.Fatalf("MSet: %v", err)
		}
		got, err := s.MGet(ctx, append(keys, "bulk:missing")...)
		if err != nil || len(got) != len(keys) {
			t.Fatalf("MGet = %d keys, %v; want %d, nil", len(got), err, len(keys))
		}
		if _, ok := got["bulk:missing"]; ok {
			t.Errorf("MGet returned a missing key")
		}
		if got[keys[7]] != "7" {
			t.Errorf("MGet[%q] = %q; want 7", keys[7], got[keys[7]])
		}

		if err := s.MSet(ctx, map[string]any{"t1": "a", "t2": "b"}, WithTTL(200*time.Millisecond)); err != nil {
			t.Fatalf("MSet with TTL: %v", err)
		}
		for _, k := range []string{"t1", "t2"} {
			if d, _ := s.TTL(ctx, k); d <= 0 || d > 200*time.Millisecond {
				t.Errorf("TTL(%s) after MSet(WithTTL(200ms)) = %v", k, d)
			}
		}

		n, err := s.Del(ctx, append(keys, "bulk:missing")...)
		if n != int64(len(keys)) || err != nil {
			t.Errorf("Del = %d, %v; want %d, nil", n, err, len(keys))
		}
		if m, err := s.MGet(ctx); m == nil || len(m) != 0 || err != nil {
			t.Errorf("MGet() = %v, %v; want empty map", m, err)
		}
		if n, err := s.Del(ctx); n != 0 || err != nil {
			t.Errorf("Del() = %d, %v; want 0, nil", n, err)
		}
		if err := s.MSet(ctx, nil); err != nil {
			t.Errorf("MSet(nil) = %v; want nil", err)
		}
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
