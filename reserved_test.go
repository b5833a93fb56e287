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
		for _, k := range []string{"session:abc", "user-sessions:bob", "ratelimit:login:bob", "ratelimit:"} {
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
		for _, k := range []string{"sessions:1", "Session:1", "session", "my-session:1", "ratelimits:1"} {
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
