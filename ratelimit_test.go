package redisservice

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
		allowed := allowedOf(t, callers, func() (RateLimitResult, error) {
			return s.CheckRateLimit(ctx, "burst", 10*time.Second, limit)
		})
		assert.Equal(t, limit, allowed, "%d concurrent callers", callers)
		n, err := b.client.Get(ctx, b.raw("ratelimit:burst")).Int()
		assert.False(t, err != nil || n != callers, "counter = %d, %v; want %d", n, err, callers)
	})
}

// allowedOf makes callers calls of call at once, and returns how many
// were allowed; no two allowed calls may report the same Remaining.
func allowedOf(t testing.TB, callers int, call func() (RateLimitResult, error)) int {
	t.Helper()
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex // guards allowed and remaining
		allowed   int
		remaining = map[int]bool{}
	)
	for range callers {
		wg.Go(func() {
			r, err := call()
			if !assert.NoError(t, err) || !r.Allowed {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			allowed++
			assert.False(t, remaining[r.Remaining], "Remaining %d reported twice", r.Remaining)
			remaining[r.Remaining] = true
		})
	}
	wg.Wait()
	return allowed
}

// rateLimitCall is one call of CheckRateLimit, AllowN or AllowAll.
type rateLimitCall func(ctx context.Context, s *Service) (RateLimitResult, error)

func checkCall(id string, window time.Duration, limit int) rateLimitCall {
	return func(ctx context.Context, s *Service) (RateLimitResult, error) {
		return s.CheckRateLimit(ctx, id, window, limit)
	}
}

func allowNCall(key string, n int, limits ...Limit) rateLimitCall {
	return func(ctx context.Context, s *Service) (RateLimitResult, error) {
		return s.AllowN(ctx, key, n, limits...)
	}
}

func allowAllCall(n int, limits ...KeyLimit) rateLimitCall {
	return func(ctx context.Context, s *Service) (RateLimitResult, error) { return s.AllowAll(ctx, n, limits...) }
}

// keysUnder returns the keys b holds under its prefix, on every master.
func keysUnder(t testing.TB, b *backend) []string {
	t.Helper()
	var keys []string
	var mu sync.Mutex // guards keys
	scan := func(ctx context.Context, c *redis.Client) error {
		ks, err := c.Keys(ctx, b.prefix+"*").Result()
		mu.Lock()
		keys = append(keys, ks...)
		mu.Unlock()
		return err
	}
	ctx := ctxT(t)
	if cc, ok := b.client.(*redis.ClusterClient); ok {
		require.NoError(t, cc.ForEachMaster(ctx, scan))
	} else {
		require.NoError(t, scan(ctx, b.client.(*redis.Client)))
	}
	return keys
}

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

// TestRateLimitInvalidArguments: every rate limit refuses bad arguments
// before anything is sent, with the zero result (not allowed), and
// without counting a Redis failure.
func TestRateLimitInvalidArguments(t *testing.T) {
	t.Parallel()
	ok := KeyLimit{"k", PerSecond(1)}
	tests := []struct {
		name string
		call rateLimitCall
		want error
	}{
		{"CheckRateLimit/empty identifier", checkCall("", time.Second, 10), ErrInvalidKey},
		{"CheckRateLimit/zero limit", checkCall("id", time.Second, 0), ErrInvalidArgument},
		{"CheckRateLimit/negative limit", checkCall("id", time.Second, -1), ErrInvalidArgument},
		{"CheckRateLimit/zero window", checkCall("id", 0, 10), ErrInvalidArgument},
		{"CheckRateLimit/negative window", checkCall("id", -time.Second, 10), ErrInvalidArgument},
		{"CheckRateLimit/sub-millisecond window", checkCall("id", 500*time.Microsecond, 10), ErrInvalidTTL},

		{"AllowN/empty key", allowNCall("", 1, PerSecond(1)), ErrInvalidKey},
		{"AllowN/negative n", allowNCall("k", -1, PerSecond(1)), ErrInvalidArgument},
		{"AllowN/no limit", allowNCall("k", 1), ErrInvalidArgument},
		{"AllowN/zero rate", allowNCall("k", 1, PerSecond(0)), ErrInvalidArgument},
		{"AllowN/negative rate", allowNCall("k", 1, PerSecond(1), Limit{Rate: -1, Period: time.Second}), ErrInvalidArgument},
		{"AllowN/zero period", allowNCall("k", 1, Limit{Rate: 1}), ErrInvalidArgument},
		{"AllowN/negative period", allowNCall("k", 1, Limit{Rate: 1, Period: -time.Second}), ErrInvalidArgument},
		{"AllowN/sub-millisecond period", allowNCall("k", 1, Limit{Rate: 1, Period: time.Millisecond - 1}), ErrInvalidTTL},
		{"AllowN/negative burst", allowNCall("k", 1, Limit{Rate: 1, Period: time.Second, Burst: -1}), ErrInvalidArgument},

		{"AllowAll/no limit", allowAllCall(1), ErrInvalidArgument},
		{"AllowAll/empty key", allowAllCall(1, ok, KeyLimit{"", PerSecond(1)}), ErrInvalidKey},
		{"AllowAll/negative n", allowAllCall(-1, ok, ok), ErrInvalidArgument},
		{"AllowAll/zero limit", allowAllCall(1, ok, KeyLimit{Key: "j"}), ErrInvalidArgument},
		{"AllowAll/zero rate", allowAllCall(1, ok, KeyLimit{"j", PerSecond(0)}), ErrInvalidArgument},
		{"AllowAll/sub-millisecond period", allowAllCall(1, ok, KeyLimit{"j", Limit{Rate: 1, Period: time.Microsecond}}), ErrInvalidTTL},
		{"AllowAll/huge burst", allowAllCall(1, ok, KeyLimit{"j", Limit{Rate: shl(41), Period: time.Hour}}), ErrInvalidArgument},
	}
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r, err := tt.call(ctx, s)
				require.ErrorIs(t, err, tt.want)
				assert.Equal(t, RateLimitResult{}, r, "the zero result (not allowed)")
			})
		}
		assert.Empty(t, keysUnder(t, b), "invalid calls wrote")
		assert.True(t, s.IsConnected())
		assert.Zero(t, s.Stats().Errors, "invalid arguments counted as Redis failures")
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

// downService returns a Service whose Redis refuses connections.
func downService(t testing.TB, opts Options) *Service {
	t.Helper()
	opts.URL = "redis://" + closedPort(t)
	opts.Timeout = 500 * time.Millisecond
	s, err := New(opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestRateLimitWhenRedisCannotBeAsked: with Redis down, a rate limit
// returns its fallback with the error, within the Timeout; after Close,
// the same fallback with ErrClosed.
func TestRateLimitWhenRedisCannotBeAsked(t *testing.T) {
	t.Parallel()
	window := 30 * time.Second
	// AllowN and AllowAll fall back alike for the same limits: open, the
	// tightest limit with n taken; closed, the slowest limit's wait for n
	// tokens (2 of 600ms).
	ip, user := Limit{Rate: 10, Period: time.Second, Burst: 4}, PerMinute(100)
	gcraOpen := RateLimitResult{Allowed: true, Limit: 4, Remaining: 2, ResetAfter: 200 * time.Millisecond}
	gcraClosed := RateLimitResult{Limit: 100, RetryAfter: 1200 * time.Millisecond, ResetAfter: 1200 * time.Millisecond}
	tests := []struct {
		name         string
		call         func(n int) rateLimitCall
		open, closed RateLimitResult // the fallbacks of a call of n = 2
	}{
		{"CheckRateLimit", func(int) rateLimitCall { return checkCall("client", window, 10) },
			RateLimitResult{Allowed: true, Limit: 10, Remaining: 9, ResetAfter: window},
			RateLimitResult{Allowed: false, Limit: 10, Remaining: 0, ResetAfter: window, RetryAfter: window}},
		{"AllowN", func(n int) rateLimitCall { return allowNCall("client", n, ip, user) }, gcraOpen, gcraClosed},
		{"AllowAll", func(n int) rateLimitCall { return allowAllCall(n, KeyLimit{"ip", ip}, KeyLimit{"user", user}) }, gcraOpen, gcraClosed},
	}
	for _, tt := range tests {
		for _, failClosed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/RateLimitFailClosed=%v", tt.name, failClosed), func(t *testing.T) {
				t.Parallel()
				s := downService(t, Options{RateLimitFailClosed: failClosed})
				start := time.Now()
				r, err := tt.call(2)(ctxT(t), s)
				end := time.Now()
				require.Error(t, err, "%s with Redis down = %+v", tt.name, r)
				assert.Less(t, end.Sub(start), 2*time.Second, "%s with Redis down; want within the 500ms Timeout bound", tt.name)
				want := tt.open
				if failClosed {
					want = tt.closed
				}
				// ResetAt is the local time of the fallback plus ResetAfter.
				assert.False(t, r.ResetAt.Before(start.Add(want.ResetAfter)) || r.ResetAt.After(end.Add(want.ResetAfter)),
					"fallback ResetAt %v; want between %v and %v", r.ResetAt, start.Add(want.ResetAfter), end.Add(want.ResetAfter))
				r.ResetAt = time.Time{}
				assert.Equal(t, want, r, "%s with Redis down", tt.name)

				require.NoError(t, s.Close())
				r, err = tt.call(1)(ctxT(t), s)
				require.ErrorIs(t, err, ErrClosed)
				assert.Equal(t, !failClosed, r.Allowed, "%s after Close", tt.name)
			})
		}
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

// TestRateLimitRecoversFromNoScript: each rate limit loads its script
// again after SCRIPT FLUSH or a restart of the server.
func TestRateLimitRecoversFromNoScript(t *testing.T) {
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
	// Five a minute and five an hour: one taken a call.
	limits := []struct {
		name string
		call rateLimitCall
		sha  string
	}{
		{"CheckRateLimit", checkCall("noscript", time.Minute, 5), rateLimitScript.Hash()},
		{"AllowN", allowNCall("noscript", 1, PerHour(5)), gcraScript.Hash()},
	}
	for _, name := range []string{"miniredis", "redis"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := servers[name](t)
			s := newService(t, Options{Client: srv.client})
			ctx := ctxT(t)
			check := func(what string, wantRemaining int) {
				t.Helper()
				for _, l := range limits {
					r, err := l.call(ctx, s)
					require.False(t, err != nil || !r.Allowed || r.Remaining != wantRemaining, "%s %s = %+v, %v; want allowed with Remaining %d", l.name, what, r, err, wantRemaining)
					ok, err := srv.client.ScriptExists(ctx, l.sha).Result()
					require.False(t, err != nil || !ok[0], "SCRIPT EXISTS after %s %s = %v, %v; want the script loaded again", l.name, what, ok, err)
				}
			}
			check("on a fresh server", 4)
			check("with the script cached", 3)
			require.NoError(t, srv.client.ScriptFlush(ctx).Err())
			check("after SCRIPT FLUSH", 2)
			if srv.restart == nil {
				return
			}
			srv.restart() // the counters are lost with the server: a new window, a full bucket
			check("after a restart", 4)
		})
	}
}
