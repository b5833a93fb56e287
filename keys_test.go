package redisservice

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSetGet(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)

		mustSet(t, s, "k", "v1")
		v, found, err := s.Get(ctx, "k")
		assert.NoError(t, err, "Get(k)")
		assert.True(t, found, "Get(k)")
		assert.Equal(t, "v1", v, "Get(k)")
		v, found, err = s.Get(ctx, "missing")
		assert.NoError(t, err, "Get(missing)")
		assert.False(t, found, "Get(missing)")
		assert.Empty(t, v, "Get(missing)")
		assert.Equal(t, "v1", b.client.Get(ctx, b.raw("k")).Val(), "raw GET of prefixed key (KeyPrefix not applied?)")
		assert.Zero(t, b.client.Exists(ctx, "k").Val(), "unprefixed key exists; KeyPrefix leaked")

		steps := []struct {
			name  string
			key   string
			value any
			opts  []SetOption
			want  bool
			after string
		}{
			{"NX on existing", "k", "v2", []SetOption{NX()}, false, "v1"},
			{"XX on existing", "k", "v3", []SetOption{XX()}, true, "v3"},
			{"XX on missing", "new", "x", []SetOption{XX()}, false, ""},
			{"NX on missing", "new", "n", []SetOption{NX()}, true, "n"},
			{"int value", "num", 42, nil, true, "42"},
			{"bytes value", "raw", []byte{0, 1, 2}, nil, true, "\x00\x01\x02"},
		}
		for _, st := range steps {
			ok, err := s.Set(ctx, st.key, st.value, st.opts...)
			assert.NoError(t, err, "%s: Set(%q)", st.name, st.key)
			assert.Equal(t, st.want, ok, "%s: Set(%q)", st.name, st.key)
			got, _, _ := s.Get(ctx, st.key)
			assert.Equal(t, st.after, got, "%s: Get(%q)", st.name, st.key)
		}
		ok, err := s.Exists(ctx, "k")
		assert.NoError(t, err, "Exists(k)")
		assert.True(t, ok, "Exists(k)")
		ok, err = s.Exists(ctx, "missing")
		assert.NoError(t, err, "Exists(missing)")
		assert.False(t, ok, "Exists(missing)")
	})
}

func TestSetTTL(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)

		// 2.5s: the key outlives the calls up to b.pass below, however
		// loaded the machine.
		_, err := s.Set(ctx, "short", "v", WithTTL(2500*time.Millisecond))
		require.NoError(t, err)
		d, err := s.TTL(ctx, "short")
		assert.NoError(t, err, "TTL(short)")
		assert.True(t, d > 1500*time.Millisecond && d <= 2500*time.Millisecond, "TTL(short) = %v; want about 2.5s", d)
		mustSet(t, s, "forever", "v")
		d, err = s.TTL(ctx, "forever")
		assert.NoError(t, err, "TTL(forever)")
		assert.Equal(t, NoExpiry, d, "TTL(forever)")
		d, err = s.TTL(ctx, "missing")
		assert.NoError(t, err, "TTL(missing)")
		assert.Equal(t, KeyMissing, d, "TTL(missing)")

		// KeepTTL keeps it; a plain Set clears it.
		_, err = s.Set(ctx, "short", "v2", KeepTTL())
		require.NoError(t, err)
		d, _ = s.TTL(ctx, "short")
		assert.Positive(t, d, "after KeepTTL, TTL; want the old TTL kept")
		b.pass(2500 * time.Millisecond)
		b.waitFor(t, "short key expires", func() bool {
			_, found, err := s.Get(ctx, "short")
			return !found && err == nil
		})
	})
}

func TestInvalidInputWritesNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		mustSet(t, s, "k", "old")

		tests := []struct {
			name string
			call func() error
			want error
		}{
			{"Set negative TTL", func() error { _, err := s.Set(ctx, "k", "x", WithTTL(-time.Second)); return err }, ErrInvalidTTL},
			{"Set zero TTL", func() error { _, err := s.Set(ctx, "k", "x", WithTTL(0)); return err }, ErrInvalidTTL},
			{"Set sub-ms TTL", func() error { _, err := s.Set(ctx, "k", "x", WithTTL(999*time.Microsecond)); return err }, ErrInvalidTTL},
			{"Set NX and XX", func() error { _, err := s.Set(ctx, "k", "x", NX(), XX()); return err }, ErrInvalidArgument},
			{"Set KeepTTL and TTL", func() error { _, err := s.Set(ctx, "k", "x", KeepTTL(), WithTTL(time.Second)); return err }, ErrInvalidArgument},
			{"Set empty key", func() error { _, err := s.Set(ctx, "", "x"); return err }, ErrInvalidKey},
			{"SetJSON bad TTL", func() error { _, err := s.SetJSON(ctx, "k", 1, WithTTL(-1)); return err }, ErrInvalidTTL},
			{"SetJSON unmarshalable", func() error { _, err := s.SetJSON(ctx, "k", make(chan int)); return err }, ErrInvalidArgument},
			{"MSet bad TTL", func() error { return s.MSet(ctx, map[string]any{"k": "x", "k2": "y"}, WithTTL(time.Microsecond)) }, ErrInvalidTTL},
			{"MSet empty key", func() error { return s.MSet(ctx, map[string]any{"k": "x", "": "y"}) }, ErrInvalidKey},
			{"MSet NX", func() error { return s.MSet(ctx, map[string]any{"k": "x"}, NX()) }, ErrInvalidArgument},
			{"Expire zero", func() error { _, err := s.Expire(ctx, "k", 0); return err }, ErrInvalidTTL},
			{"Expire negative", func() error { _, err := s.Expire(ctx, "k", -time.Second); return err }, ErrInvalidTTL},
			{"Expire sub-ms", func() error { _, err := s.Expire(ctx, "k", time.Microsecond); return err }, ErrInvalidTTL},
			{"Del empty key", func() error { _, err := s.Del(ctx, "k", ""); return err }, ErrInvalidKey},
			{"HSet empty key", func() error { return s.HSet(ctx, "", "f", "v") }, ErrInvalidKey},
			{"HDel no fields", func() error { _, err := s.HDel(ctx, "k"); return err }, ErrInvalidArgument},
			{"GetJSON nil dst", func() error { _, err := s.GetJSON(ctx, "k", nil); return err }, ErrInvalidArgument},
			{"GetJSON non-pointer dst", func() error { var v struct{}; _, err := s.GetJSON(ctx, "k", v); return err }, ErrInvalidArgument},
		}
		for _, tt := range tests {
			assert.ErrorIs(t, tt.call(), tt.want, tt.name)
		}
		v, _ := b.client.Get(ctx, b.raw("k")).Result()
		assert.Equal(t, "old", v, "after invalid calls k")
		assert.Equal(t, time.Duration(-1), b.client.PTTL(ctx, b.raw("k")).Val(), "after invalid calls PTTL(k); want no TTL")
		assert.Zero(t, b.client.Exists(ctx, b.raw("k2"), b.raw("")).Val(), "invalid MSet wrote keys")

		empty := []struct {
			name string
			call func() error
		}{
			{"Get", func() error { _, _, err := s.Get(ctx, ""); return err }},
			{"Exists", func() error { _, err := s.Exists(ctx, ""); return err }},
			{"Expire", func() error { _, err := s.Expire(ctx, "", time.Second); return err }},
			{"TTL", func() error { _, err := s.TTL(ctx, ""); return err }},
			{"MGet", func() error { _, err := s.MGet(ctx, "a", ""); return err }},
			{"SetJSON", func() error { _, err := s.SetJSON(ctx, "", 1); return err }},
			{"GetJSON", func() error { var v int; _, err := s.GetJSON(ctx, "", &v); return err }},
			{"HGet", func() error { _, _, err := s.HGet(ctx, "", "f"); return err }},
			{"HGetAll", func() error { _, err := s.HGetAll(ctx, ""); return err }},
			{"HDel", func() error { _, err := s.HDel(ctx, "", "f"); return err }},
		}
		for _, tt := range empty {
			assert.ErrorIs(t, tt.call(), ErrInvalidKey, "%s(\"\")", tt.name)
		}
	})
}

func TestExpire(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		mustSet(t, s, "k", "v")
		// 2.9s: 900ms of slack, and below the 3s of a rounded-up EXPIRE.
		ok, err := s.Expire(ctx, "k", 2900*time.Millisecond)
		require.NoError(t, err, "Expire(k)")
		require.True(t, ok, "Expire(k)")
		d, _ := s.TTL(ctx, "k")
		assert.True(t, d > 2*time.Second && d <= 2900*time.Millisecond,
			"TTL after Expire(2.9s) = %v; want about 2.9s (milliseconds kept)", d)
		ok, err = s.Expire(ctx, "missing", time.Second)
		assert.NoError(t, err, "Expire(missing)")
		assert.False(t, ok, "Expire(missing)")
		ok, err = s.Expire(ctx, "k", 100*time.Millisecond)
		require.NoError(t, err, "Expire(k, 100ms)")
		require.True(t, ok, "Expire(k, 100ms)")
		b.pass(150 * time.Millisecond)
		b.waitFor(t, "k expires", func() bool {
			ok, err := s.Exists(ctx, "k")
			return !ok && err == nil
		})
	})
}

func mustSet(t testing.TB, s *Service, key string, value any) {
	t.Helper()
	ok, err := s.Set(context.Background(), key, value)
	require.NoError(t, err, "Set(%q)", key)
	require.True(t, ok, "Set(%q)", key)
}

func TestLargeValues(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		big := strings.Repeat("0123456789abcdef", 5<<20/16) // 5 MiB
		_, err := s.Set(ctx, "big", big, WithTTL(time.Minute))
		require.NoError(t, err, "Set(5 MiB)")
		// Not assert.Equal: a failure would print 5 MiB twice.
		v, found, err := s.Get(ctx, "big")
		assert.NoError(t, err, "Get(5 MiB)")
		assert.True(t, found, "Get(5 MiB)")
		assert.True(t, len(v) == len(big) && v == big, "Get(5 MiB) = %d bytes; want the value back", len(v))
		in := map[string][]string{"lines": strings.Split(big[:3<<20], "f")}
		_, err = s.SetJSON(ctx, "bigjson", in, WithTTL(time.Minute))
		require.NoError(t, err, "SetJSON(3 MiB)")
		var out map[string][]string
		found, err = s.GetJSON(ctx, "bigjson", &out)
		assert.NoError(t, err, "GetJSON(3 MiB)")
		assert.True(t, found, "GetJSON(3 MiB)")
		assert.Equal(t, len(in["lines"]), len(out["lines"]), "GetJSON(3 MiB) lines")
	})
}
