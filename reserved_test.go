package redisservice

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReservedKeysAreRefused: the string, JSON, hash and key calls do not
// write or delete keys in the namespaces the Service keeps for itself
// (sessions, their user index, rate-limit counters), so that a key name
// taken from user input cannot forge a session or turn a limiter off.
// Options.AllowReservedKeys lifts that.
func TestReservedKeysAreRefused(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		for _, k := range []string{"session:abc", "user-sessions:bob", "ratelimit:login:bob", "ratelimit:", "gcra:login:bob", "scs:session:tok"} {
			writes := map[string]func() error{
				"Set":     func() error { _, err := s.Set(ctx, k, "x"); return err },
				"SetJSON": func() error { _, err := s.SetJSON(ctx, k, map[string]string{"userId": "admin"}); return err },
				"MSet":    func() error { return s.MSet(ctx, map[string]any{"fine": "v", k: "x"}) },
				"HSet":    func() error { return s.HSet(ctx, k, "f", "x") },
				"HDel":    func() error { _, err := s.HDel(ctx, k, "f"); return err },
				"Expire":  func() error { _, err := s.Expire(ctx, k, time.Minute); return err },
				"Del":     func() error { _, err := s.Del(ctx, "fine", k); return err },
			}
			for name, write := range writes {
				assert.ErrorIs(t, write(), ErrInvalidKey, "%s(%q)", name, k)
			}
			assert.Zero(t, b.client.Exists(ctx, b.raw(k), b.raw("fine")).Val(), "written: %q", k)
		}
		// Neighbours of the reserved names are the caller's.
		for _, k := range []string{"sessions:1", "Session:1", "session", "my-session:1", "ratelimits:1", "scs:sessions:1", "scs:"} {
			_, err := s.Set(ctx, k, "v")
			assert.NoError(t, err, "Set(%q)", k)
		}
		assert.Zero(t, s.Stats().Errors)

		// Reads are not refused; sessions and rate limits keep their keys.
		_, _, err := s.Get(ctx, "session:abc")
		require.NoError(t, err)
		_, err = s.CheckRateLimit(ctx, "login:bob", time.Minute, 5)
		require.NoError(t, err)
		assert.Equal(t, "1", b.client.Get(ctx, b.raw("ratelimit:login:bob")).Val())

		open := b.service(t, Options{AllowReservedKeys: true})
		_, err = open.Set(ctx, "session:abc", "x", WithTTL(time.Minute))
		require.NoError(t, err, "Set with AllowReservedKeys")
		_, err = open.Del(ctx, "session:abc")
		require.NoError(t, err, "Del with AllowReservedKeys")
	})
}

// TestCacheRefusesReservedKeys: Cache does not store under a reserved
// key either (a "session:"+userInput key would forge a session), but, as
// its fallback contract says, still returns the loader's value, with
// ErrInvalidKey, without touching Redis.
func TestCacheRefusesReservedKeys(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		type forged struct {
			UserID string `json:"userId"`
		}
		for _, k := range []string{"session:abc", "user-sessions:bob", "ratelimit:login:bob", "gcra:login:bob", "scs:session:tok"} {
			l := &countingLoader[forged]{v: forged{UserID: "admin"}}
			for range 2 {
				v, err := Cache(ctx, s, k, time.Minute, l.load, NotFoundTTL(time.Minute))
				require.ErrorIs(t, err, ErrInvalidKey, "Cache(%q)", k)
				assert.Equal(t, forged{UserID: "admin"}, v, "Cache(%q) returns the loader's value", k)
			}
			assert.EqualValues(t, 2, l.calls.Load(), "Cache(%q): the loader runs on every call", k)
			assert.Zero(t, b.client.Exists(ctx, b.raw(k), b.raw(lockKey(k)), b.raw(notFoundKey(k))).Val(), "written: %q", k)

			failing := &countingLoader[forged]{err: errBoom}
			v, err := Cache(ctx, s, k, time.Minute, failing.load)
			require.ErrorIs(t, err, errBoom, "Cache(%q) with a failing loader", k)
			assert.Zero(t, v)
		}
		_, _, err := s.Get(ctx, "session:abc") // the Service still reads Redis
		require.NoError(t, err)

		open := b.service(t, Options{AllowReservedKeys: true})
		l := &countingLoader[string]{v: "v"}
		for range 2 {
			v, err := Cache(ctx, open, "session:abc", time.Minute, l.load)
			require.NoError(t, err, "Cache with AllowReservedKeys")
			assert.Equal(t, "v", v)
		}
		assert.EqualValues(t, 1, l.calls.Load(), "with AllowReservedKeys the value is cached")
		assert.Equal(t, `"v"`, b.client.Get(ctx, b.raw("session:abc")).Val())
	})
}

// TestInvalidatePatternSparesReservedKeys: InvalidatePattern keeps to the
// rule every write keeps: a pattern that only reserved keys can match is
// refused, and a wider one deletes the caller's keys but not the
// sessions, their index, rate-limit state or scs sessions, unless
// Options.AllowReservedKeys.
func TestInvalidatePatternSparesReservedKeys(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id, err := NewSessionID()
		require.NoError(t, err)
		require.NoError(t, s.CreateSession(ctx, id, SessionData{UserID: "bob"}, time.Minute))
		_, err = s.AllowN(ctx, "login:bob", 1, PerMinute(5))
		require.NoError(t, err)
		_, err = s.CheckRateLimit(ctx, "login:bob", time.Minute, 5)
		require.NoError(t, err)
		require.NoError(t, b.client.Set(ctx, b.raw("scs:session:tok"), "x", time.Minute).Err())
		reserved := []string{"session:" + id, "user-sessions:bob", "gcra:login:bob", "ratelimit:login:bob", "scs:session:tok"}
		mine := []string{"sessions:1", "scs:other", "product:1", "s"}
		for _, k := range mine {
			_, err := s.Set(ctx, k, "v", WithTTL(time.Minute))
			require.NoError(t, err)
		}
		exist := func(keys []string) int64 {
			n := int64(0)
			for _, k := range keys {
				n += b.client.Exists(ctx, b.raw(k)).Val()
			}
			return n
		}
		require.EqualValues(t, len(reserved), exist(reserved))

		for _, p := range []string{"session:*", "user-sessions:*", "gcra:*", "ratelimit:*", "scs:session:*",
			"session:" + id, `sess\ion:*`, "gcra:login:?ob"} {
			n, err := s.InvalidatePattern(ctx, p)
			assert.ErrorIs(t, err, ErrInvalidKey, "InvalidatePattern(%q)", p)
			assert.Zero(t, n, "InvalidatePattern(%q)", p)
		}
		n, err := s.InvalidatePattern(ctx, "s*")
		require.NoError(t, err)
		assert.EqualValues(t, 3, n, `InvalidatePattern("s*") deletes sessions:1, scs:other and s`)
		n, err = s.InvalidatePattern(ctx, "*")
		require.NoError(t, err)
		assert.EqualValues(t, 1, n, `InvalidatePattern("*") deletes product:1`)
		assert.Zero(t, exist(mine))
		assert.EqualValues(t, len(reserved), exist(reserved), "reserved keys left")
		data, found, err := s.GetSession(ctx, id)
		require.NoError(t, err)
		assert.True(t, found)
		assert.Equal(t, "bob", data.UserID)

		open := b.service(t, Options{AllowReservedKeys: true})
		n, err = open.InvalidatePattern(ctx, "session:*")
		require.NoError(t, err, "with AllowReservedKeys")
		assert.EqualValues(t, 1, n)
		n, err = open.InvalidatePattern(ctx, "*")
		require.NoError(t, err)
		assert.EqualValues(t, len(reserved)-1, n)
		assert.Zero(t, exist(reserved))
	})
}
