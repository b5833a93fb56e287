package redisservice

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// serverTime returns the backend's TIME.
func (b *backend) serverTime(t testing.TB) time.Time {
	t.Helper()
	if !b.real() {
		return b.now
	}
	now, err := b.client.Time(ctxT(t)).Result()
	require.NoError(t, err, "TIME")
	return now
}

func TestCheckRateLimit(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		const limit = 3
		// The calls up to b.pass below fit in the window, however loaded
		// the machine.
		window := 3 * time.Second
		raw := b.raw("ratelimit:user-1")

		before := b.serverTime(t)
		var first RateLimitResult
		for i := 1; i <= limit; i++ {
			r, err := s.CheckRateLimit(ctx, "user-1", window, limit)
			require.NoError(t, err, "CheckRateLimit #%d", i)
			require.False(t, !r.Allowed || r.Limit != limit || r.Remaining != limit-i || r.RetryAfter != 0, "CheckRateLimit #%d = %+v; want allowed, Limit %d, Remaining %d, RetryAfter 0", i, r, limit, limit-i)
			assert.False(t, r.ResetAfter <= 0 || r.ResetAfter > window, "CheckRateLimit #%d ResetAfter = %v; want in (0, %v]", i, r.ResetAfter, window)
			if i == 1 {
				first = r
			} else {
				d := r.ResetAt.Sub(first.ResetAt)
				assert.False(t, d < -time.Millisecond || d > time.Millisecond, "CheckRateLimit #%d ResetAt = %v; want the window's end %v", i, r.ResetAt, first.ResetAt)
			}
		}
		after := b.serverTime(t)
		start := first.ResetAt.Add(-window)
		assert.False(t, start.Before(before.Add(-time.Millisecond)) || start.After(after.Add(time.Millisecond)), "window start ResetAt-window = %v; want between %v and %v (server TIME around the first call)", start, before, after)

		denied, err := s.CheckRateLimit(ctx, "user-1", window, limit)
		require.NoError(t, err, "CheckRateLimit over the limit")
		assert.False(t, denied.Allowed || denied.Remaining != 0 || denied.RetryAfter <= 0 || denied.RetryAfter > window || denied.RetryAfter != denied.ResetAfter, "CheckRateLimit over the limit = %+v; want denied, Remaining 0, 0 < RetryAfter = ResetAfter <= %v", denied, window)
		pttl, err := b.client.PTTL(ctx, raw).Result()
		assert.False(t, err != nil || pttl <= 0 || pttl > window, "PTTL(%q) = %v, %v; want in (0, %v]", raw, pttl, err, window)
		n, err := b.client.Get(ctx, raw).Int()
		assert.False(t, err != nil || n != limit+1, "counter = %d, %v; want %d (denied requests are counted)", n, err, limit+1)

		// Another identifier has its own window.
		user2, err := s.CheckRateLimit(ctx, "user-2", window, limit)
		assert.False(t, err != nil || !user2.Allowed || user2.Remaining != limit-1, "CheckRateLimit(user-2) = %+v, %v; want allowed with Remaining %d", user2, err, limit-1)

		// A new window starts once the old one has expired.
		b.pass(window)
		b.waitFor(t, "counter expires", func() bool { return b.client.Exists(ctx, raw).Val() == 0 })
		r, err := s.CheckRateLimit(ctx, "user-1", window, limit)
		assert.False(t, err != nil || !r.Allowed || r.Remaining != limit-1, "CheckRateLimit after the window = %+v, %v; want allowed with Remaining %d", r, err, limit-1)
		assert.True(t, r.ResetAt.After(first.ResetAt), "new window ResetAt = %v; want after the old window's %v", r.ResetAt, first.ResetAt)
	})
}

func TestCheckRateLimitConcurrentCallersNeverExceedTheLimit(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		const limit, callers = 20, 300
		var (
			wg        sync.WaitGroup
			mu        sync.Mutex
			allowed   int
			remaining = map[int]bool{}
		)
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := s.CheckRateLimit(ctx, "burst", 10*time.Second, limit)
				if !assert.NoError(t, err, "CheckRateLimit") {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if r.Allowed {
					allowed++
					assert.False(t, remaining[r.Remaining], "Remaining %d reported twice", r.Remaining)
					remaining[r.Remaining] = true
				}
			}()
		}
		wg.Wait()
		assert.False(t, allowed != limit, "%d concurrent callers: %d allowed; want exactly %d", callers, allowed, limit)
		n, err := b.client.Get(ctx, b.raw("ratelimit:burst")).Int()
		assert.False(t, err != nil || n != callers, "counter = %d, %v; want %d", n, err, callers)
	})
}

func TestCheckRateLimitInvalidArguments(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		tests := []struct {
			name   string
			id     string
			window time.Duration
			limit  int
			want   error
		}{
			{"empty identifier", "", time.Second, 10, ErrInvalidKey},
			{"zero limit", "id", time.Second, 0, ErrInvalidArgument},
			{"negative limit", "id", time.Second, -1, ErrInvalidArgument},
			{"zero window", "id", 0, 10, ErrInvalidArgument},
			{"negative window", "id", -time.Second, 10, ErrInvalidArgument},
			{"sub-millisecond window", "id", 500 * time.Microsecond, 10, ErrInvalidTTL},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r, err := s.CheckRateLimit(ctx, tt.id, tt.window, tt.limit)
				assert.ErrorIs(t, err, tt.want, "CheckRateLimit(%q, %v, %d) error = %v; want %v", tt.id, tt.window, tt.limit, err, tt.want)
				assert.False(t, r != (RateLimitResult{}), "CheckRateLimit(%q, %v, %d) = %+v; want the zero result (not allowed)", tt.id, tt.window, tt.limit, r)
				n := b.client.Exists(ctx, b.raw("ratelimit:"+tt.id)).Val()
				assert.False(t, n != 0, "CheckRateLimit(%q, %v, %d) wrote a counter", tt.id, tt.window, tt.limit)
			})
		}
		assert.False(t, !s.IsConnected() || s.Stats().Errors != 0, "invalid arguments counted as Redis failures: IsConnected %v, Stats %+v", s.IsConnected(), s.Stats())
	})
}

func TestCheckRateLimitGivesAStrayCounterATTL(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		raw := b.raw("ratelimit:legacy")
		// What the original service left behind when it died between INCR
		// and EXPIRE: a counter that would block its client forever.
		require.NoError(t, b.client.Set(ctx, raw, 7, 0).Err())
		r, err := s.CheckRateLimit(ctx, "legacy", 3*time.Second, 10)
		assert.False(t, err != nil || !r.Allowed || r.Remaining != 2, "CheckRateLimit = %+v, %v; want allowed with Remaining 2", r, err)
		pttl := b.client.PTTL(ctx, raw).Val()
		assert.False(t, pttl <= 0 || pttl > 3*time.Second, "PTTL(%q) = %v; want in (0, 3s]", raw, pttl)
	})
}

func TestCheckRateLimitMillisecondWindow(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		// 1.9ms is used as 1ms: the window is never longer than asked.
		r, err := s.CheckRateLimit(ctx, "ms", 1900*time.Microsecond, 1)
		assert.False(t, err != nil || !r.Allowed || r.ResetAfter <= 0 || r.ResetAfter > time.Millisecond, "CheckRateLimit(1.9ms) = %+v, %v; want allowed with ResetAfter in (0, 1ms]", r, err)
	})
}

func TestCheckRateLimitUsesTheServerClock(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	// The server's clock is far from the local one: ResetAt follows the
	// server, which every process sharing the limit agrees on.
	serverNow := time.Date(2031, 3, 4, 5, 6, 7, 123_000_000, time.UTC)
	b.mr.SetTime(serverNow)
	r, err := s.CheckRateLimit(ctxT(t), "clock", 90*time.Second, 5)
	require.NoError(t, err)
	want := serverNow.Add(90 * time.Second)
	assert.False(t, !r.ResetAt.Equal(want) || r.ResetAfter != 90*time.Second, "CheckRateLimit ResetAt, ResetAfter = %v, %v; want %v, 90s", r.ResetAt, r.ResetAfter, want)
}

func TestCheckRateLimitWhenRedisCannotBeAsked(t *testing.T) {
	t.Parallel()
	addr := closedPort(t)
	window := 30 * time.Second
	for _, failClosed := range []bool{false, true} {
		t.Run(fmt.Sprintf("RateLimitFailClosed=%v", failClosed), func(t *testing.T) {
			t.Parallel()
			s, err := New(Options{URL: "redis://" + addr, Timeout: 500 * time.Millisecond, RateLimitFailClosed: failClosed})
			require.NoError(t, err)
			defer s.Close()
			start := time.Now()
			r, err := s.CheckRateLimit(context.Background(), "client", window, 10)
			took := time.Since(start)
			assert.False(t, took > 2*time.Second, "CheckRateLimit with Redis down took %v; want within the 500ms Timeout bound", took)
			require.Error(t, err, "CheckRateLimit with Redis down = %+v, nil error; want an error", r)
			want := RateLimitResult{Allowed: true, Limit: 10, Remaining: 9, ResetAfter: window}
			if failClosed {
				want = RateLimitResult{Allowed: false, Limit: 10, Remaining: 0, ResetAfter: window, RetryAfter: window}
			}
			got := r
			got.ResetAt = time.Time{}
			assert.False(t, got != want, "CheckRateLimit with Redis down = %+v; want %+v", got, want)
			d := time.Until(r.ResetAt)
			assert.False(t, d <= 0 || d > window, "fallback ResetAt in %v; want about now + %v", d, window)

			// After Close: the same fallback, with ErrClosed.
			_ = s.Close()
			r, err = s.CheckRateLimit(context.Background(), "client", window, 10)
			assert.False(t, !errors.Is(err, ErrClosed) || r.Allowed != !failClosed, "CheckRateLimit after Close = %+v, %v; want Allowed %v and ErrClosed", r, err, !failClosed)
		})
	}
}

func TestCheckRateLimitRepairsAForeignValue(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		const limit = 3
		window := time.Minute
		raw := b.raw("ratelimit:login:bob")
		tests := []struct {
			name      string
			write     func() error
			wantCount int // the counter after one request
		}{
			{"not an integer", func() error { return b.client.Set(ctx, raw, "x", 0).Err() }, 1},
			{"a float", func() error { return b.client.Set(ctx, raw, "1.5", 0).Err() }, 1},
			{"at the integer limit", func() error { return b.client.Set(ctx, raw, "9223372036854775807", 0).Err() }, 1},
			{"a hash", func() error { return b.client.HSet(ctx, raw, "f", "v").Err() }, 1},
			{"a list", func() error { return b.client.RPush(ctx, raw, "v").Err() }, 1},
			{"a TTL of a year", func() error { return b.client.Set(ctx, raw, "1", 365*24*time.Hour).Err() }, 2},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				require.NoError(t, b.client.Del(ctx, raw).Err())
				require.NoError(t, tt.write())
				r, err := s.CheckRateLimit(ctx, "login:bob", window, limit)
				require.NoError(t, err)
				assert.True(t, r.Allowed)
				assert.Equal(t, limit-tt.wantCount, r.Remaining)
				n, err := b.client.Get(ctx, raw).Int()
				require.NoError(t, err)
				assert.Equal(t, tt.wantCount, n, "counter")
				pttl := b.client.PTTL(ctx, raw).Val()
				assert.True(t, pttl > 0 && pttl <= window, "PTTL %v; want in (0, %v]", pttl, window)
				// The limit holds again.
				for range limit {
					r, err = s.CheckRateLimit(ctx, "login:bob", window, limit)
					require.NoError(t, err)
				}
				assert.False(t, r.Allowed, "the limit is enforced after the repair")
			})
		}
		assert.True(t, s.IsConnected())
		assert.Zero(t, s.Stats().Errors)
	})
}

func TestCheckRateLimitRecoversFromNoScript(t *testing.T) {
	t.Parallel()
	type server struct {
		client  *redis.Client
		restart func() // nil when the server cannot be restarted
	}
	servers := map[string]func(t *testing.T) server{
		"miniredis": func(t *testing.T) server {
			b := newBackend(t, "miniredis")
			return server{client: b.client.(*redis.Client)}
		},
		"redis": func(t *testing.T) server {
			sr := startRedisServer(t)
			c := redis.NewClient(&redis.Options{Addr: sr.addr(), ContextTimeoutEnabled: true})
			t.Cleanup(func() { c.Close() })
			return server{client: c, restart: sr.restart}
		},
	}
	for _, name := range []string{"miniredis", "redis"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := servers[name](t)
			s, err := New(Options{Client: srv.client})
			require.NoError(t, err)
			defer s.Close()
			ctx := ctxT(t)
			sha := rateLimitScript.Hash()
			check := func(what string, wantRemaining int) {
				t.Helper()
				r, err := s.CheckRateLimit(ctx, "noscript", time.Minute, 5)
				require.False(t, err != nil || !r.Allowed || r.Remaining != wantRemaining, "CheckRateLimit %s = %+v, %v; want allowed with Remaining %d", what, r, err, wantRemaining)
				ok, err := srv.client.ScriptExists(ctx, sha).Result()
				require.False(t, err != nil || !ok[0], "SCRIPT EXISTS after CheckRateLimit %s = %v, %v; want the script loaded again", what, ok, err)
			}
			check("on a fresh server", 4)
			check("with the script cached", 3)
			require.NoError(t, srv.client.ScriptFlush(ctx).Err())
			check("after SCRIPT FLUSH", 2)
			if srv.restart == nil {
				return
			}
			srv.restart() // the counter is lost with the server: a new window
			check("after a restart", 4)
		})
	}
}
