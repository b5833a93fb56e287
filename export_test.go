package redisservice

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/vevurn/redisservice/internal/localtier"
)

// Test-only hooks into the Cache's groups and tier.

// keyOf returns the flight key of key read as a T.
func keyOf[T any](key string) flightKey { return flightKey{key: key, typ: reflect.TypeFor[T]()} }

// waiting returns how many callers wait for k's load in s, or -1 when
// no load of k is in flight.
func waiting(s *Service, k flightKey) int { return s.flights.Waiters(k) }

// loading reports whether a load of k is in flight in s: the mark that
// keeps a second one from starting.
func loading(s *Service, k flightKey) bool { return s.flights.Waiters(k) >= 0 }

// onForget makes s call fn as each load's mark is cleared, before its
// callers wake. fn runs in the load's goroutine.
func onForget(s *Service, fn func(flightKey)) { s.flights.OnForget(fn) }

// readers returns how many callers wait for the read of key in flight
// in s besides its reader, or -1 when none is in flight.
func readers(s *Service, key string) int { return s.reads.Waiters(readKey{key: key}) }

// localHas reports whether the local tier holds a live copy of key as a
// T, whether or not the tier is usable now.
func localHas[T any](s *Service, key string) bool { return localtier.Holds[T](s.local, key) }

// useLocalTier gives s, made without one, a local tier of n entries in
// use without tracking: it follows no node, so only Cache itself drops
// its copies. Call it before s is used.
func useLocalTier(t testing.TB, s *Service, n int) {
	t.Helper()
	lt := localtier.New(localtier.Config{Entries: n, Bytes: 64 << 20, Prefix: s.prefix, Log: s.log})
	s.local = lt
	none := localtier.Topology{List: func(context.Context) (map[string]*redis.Options, string, error) { return nil, "", nil }}
	require.True(t, s.goBackground(func(ctx context.Context) { lt.Follow(ctx, none, s.goBackground) }))
	require.Eventually(t, lt.Usable, 10*time.Second, time.Millisecond, "the local tier comes into use")
}

// putLocal puts v in s's local tier as if read now from Redis with the
// remaining time to live pttl, under StaleWhileRevalidate(swr).
func putLocal[T any](s *Service, key string, v T, pttl, swr time.Duration) {
	localtier.Put(s.local, key, s.local.Ticket(key, ""), v, 1, time.Now(), pttl, swr)
}

// refreshNow asks for a StaleWhileRevalidate refresh of key, as a call
// that found its value stale does.
func refreshNow[T any](ctx context.Context, s *Service, key string, ttl time.Duration, load func(context.Context) (T, error), opts ...CacheOption) {
	co, err := buildCacheOptions(opts)
	if err != nil {
		panic(err)
	}
	refresh(ctx, s, keyOf[T](key), ttl, load, co)
}
