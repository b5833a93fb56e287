package redisservice

import (
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLimitConstructors(t *testing.T) {
	t.Parallel()
	assert.Equal(t, Limit{Rate: 7, Period: time.Second, Burst: 7}, PerSecond(7))
	assert.Equal(t, Limit{Rate: 7, Period: time.Minute, Burst: 7}, PerMinute(7))
	assert.Equal(t, Limit{Rate: 7, Period: time.Hour, Burst: 7}, PerHour(7))
	assert.Equal(t, 7, Limit{Rate: 7, Period: time.Hour}.burst(), "zero Burst means Rate")
}

func TestAllowN(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		// One token every 12 minutes: nothing comes back during the test
		// on a real server.
		l := Limit{Rate: 5, Period: time.Hour, Burst: 3}
		ei := 12 * time.Minute

		for i := 1; i <= 3; i++ {
			r, err := s.AllowN(ctx, "user", 1, l)
			require.NoError(t, err)
			assert.True(t, r.Allowed, "AllowN #%d", i)
			assert.Equal(t, 3, r.Limit, "AllowN #%d Limit (the burst)", i)
			assert.Equal(t, 3-i, r.Remaining, "AllowN #%d Remaining", i)
			assert.Zero(t, r.RetryAfter, "AllowN #%d RetryAfter", i)
			assert.InDelta(t, float64(time.Duration(i)*ei), float64(r.ResetAfter), float64(10*time.Second), "AllowN #%d ResetAfter", i)
		}
		raw := b.raw("gcra:user")
		pttl := b.client.PTTL(ctx, raw).Val()
		// Twice the refill time of a full burst, from the first request.
		assert.True(t, pttl > 6*ei-10*time.Second && pttl <= 6*ei, "PTTL(%s) = %v; want about %v", raw, pttl, 6*ei)

		denied, err := s.AllowN(ctx, "user", 1, l)
		require.NoError(t, err)
		assert.False(t, denied.Allowed)
		assert.Zero(t, denied.Remaining)
		assert.InDelta(t, float64(ei), float64(denied.RetryAfter), float64(10*time.Second), "RetryAfter: one token")
		assert.InDelta(t, float64(3*ei), float64(denied.ResetAfter), float64(10*time.Second), "ResetAfter: the bucket full again")
		now := b.serverTime(t)
		assert.WithinDuration(t, now.Add(denied.ResetAfter), denied.ResetAt, 10*time.Second, "ResetAt on the server's clock")

		// A peek reports and takes nothing.
		before := b.client.HGetAll(ctx, raw).Val()
		peek, err := s.AllowN(ctx, "user", 0, l)
		require.NoError(t, err)
		assert.True(t, peek.Allowed, "n == 0 is always allowed")
		assert.Zero(t, peek.Remaining)
		assert.Equal(t, before, b.client.HGetAll(ctx, raw).Val(), "a peek wrote")

		// Another key has its own bucket.
		other, err := s.AllowN(ctx, "other", 2, l)
		require.NoError(t, err)
		assert.True(t, other.Allowed)
		assert.Equal(t, 1, other.Remaining)

		if !b.real() {
			b.pass(ei + time.Millisecond)
			r, err := s.AllowN(ctx, "user", 0, l)
			require.NoError(t, err)
			assert.Equal(t, 1, r.Remaining, "one token back after an interval")
			r, err = s.AllowN(ctx, "user", 1, l)
			require.NoError(t, err)
			assert.True(t, r.Allowed, "allowed after an interval")
			b.pass(6 * ei)
			b.waitFor(t, "hash expires", func() bool { return b.client.Exists(ctx, raw).Val() == 0 })
		}
	})
}

func TestAllowNConcurrentCallersGetExactlyTheBurst(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		const callers, burst = 300, 50
		// Emission intervals of whole seconds: no rounding in Remaining. An
		// hour a token: none comes back while the callers run, however
		// loaded the machine.
		second := Limit{Rate: 1000, Period: 1000 * time.Hour}
		limits := []Limit{{Rate: burst, Period: time.Hour}, second}
		allowed := allowedOf(t, callers, func() (RateLimitResult, error) { return s.AllowN(ctx, "crowd", 1, limits...) })
		assert.Equal(t, burst, allowed, "%d concurrent callers", callers)
		r, err := s.AllowN(ctx, "crowd", 0, second)
		require.NoError(t, err)
		assert.Equal(t, 1000-burst, r.Remaining, "the second limit took only the allowed requests")
	})
}

func TestAllowNSeveralLimitsAllOrNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		short := Limit{Rate: 3, Period: time.Hour}    // 3 at once
		long := Limit{Rate: 5, Period: 2 * time.Hour} // 5 at once, refills slower
		for _, key := range []string{"plain", "{", "}", "a{b}c", "{}", "}{", "x{y"} {
			t.Run(key, func(t *testing.T) {
				r, err := s.AllowN(ctx, key, 2, short, long)
				require.NoError(t, err)
				assert.True(t, r.Allowed)
				assert.Equal(t, 1, r.Remaining, "the tightest limit: short has 1 left, long 3")
				assert.Equal(t, 3, r.Limit)

				// short has room for 1, not 2: denied, nothing taken from long.
				r, err = s.AllowN(ctx, key, 2, short, long)
				require.NoError(t, err)
				assert.False(t, r.Allowed)
				assert.Equal(t, 3, r.Limit, "denied by short")
				assert.InDelta(t, float64(20*time.Minute), float64(r.RetryAfter), float64(10*time.Second), "one token of short")

				peek, err := s.AllowN(ctx, key, 0, long)
				require.NoError(t, err)
				assert.Equal(t, 3, peek.Remaining, "the denied request took from long")

				// 1 fits both: taken from both; long is now the tightest
				// at equal Remaining? short 0, long 2.
				r, err = s.AllowN(ctx, key, 1, short, long)
				require.NoError(t, err)
				assert.True(t, r.Allowed)
				assert.Equal(t, 0, r.Remaining)
				assert.Equal(t, 3, r.Limit)
				peek, err = s.AllowN(ctx, key, 0, long)
				require.NoError(t, err)
				assert.Equal(t, 2, peek.Remaining)

				// Denied by long only: RetryAfter is the longer wait.
				r, err = s.AllowN(ctx, key, 3, long, Limit{Rate: 100, Period: time.Hour})
				require.NoError(t, err)
				assert.False(t, r.Allowed)
				assert.Equal(t, 5, r.Limit, "denied by long")
				assert.InDelta(t, float64(24*time.Minute), float64(r.RetryAfter), float64(10*time.Second), "one token of long")
			})
		}
	})
}

func TestAllowNAboveTheBurst(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		l := Limit{Rate: 6, Period: time.Hour, Burst: 2} // 10 minutes a token
		r, err := s.AllowN(ctx, "big", 5, l)
		require.NoError(t, err, "n above the burst is not an error")
		assert.False(t, r.Allowed)
		assert.Zero(t, r.Remaining)
		assert.InDelta(t, float64(30*time.Minute), float64(r.RetryAfter), float64(time.Second), "(n - burst) intervals on a fresh key")
		assert.Zero(t, b.client.Exists(ctx, b.raw("gcra:big")).Val(), "a denied request wrote")

		// Redis down: still denied (fail open never lets it through).
		down := downService(t, Options{})
		r, err = down.AllowN(ctx, "big", 5, l)
		require.Error(t, err)
		assert.False(t, r.Allowed)
		assert.Equal(t, 30*time.Minute, r.RetryAfter)
	})
}

// TestAllowNReplacesAForeignValue: a gcra: key that holds what AllowN
// cannot read is a fresh bucket; a hash that lost its expiry (PERSIST, or
// written by a tool) keeps its state. Either way the next allowed call
// gives the hash a TTL, instead of it living for ever.
func TestAllowNReplacesAForeignValue(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		l := PerHour(2)
		field := "2/3600/2"
		raw := b.raw("gcra:k")
		tests := []struct {
			name          string
			write         func(t *testing.T)
			wantRemaining int // after one request
		}{
			{"string", func(*testing.T) { b.client.Set(ctx, raw, "x", 0) }, 1},
			{"list", func(*testing.T) { b.client.RPush(ctx, raw, "x") }, 1},
			{"garbage field", func(*testing.T) { b.client.HSet(ctx, raw, field, "not a number") }, 1},
			{"far future TAT", func(*testing.T) { b.client.HSet(ctx, raw, field, "1e300") }, 1},
			{"nan TAT", func(*testing.T) { b.client.HSet(ctx, raw, field, "nan") }, 1},
			{"far future exp", func(*testing.T) { b.client.HSet(ctx, raw, "exp", "1e300") }, 1},
			{"hash without TTL", func(t *testing.T) {
				_, err := s.AllowN(ctx, "k", 1, l)
				require.NoError(t, err)
				require.True(t, b.client.Persist(ctx, raw).Val())
			}, 0},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				require.NoError(t, b.client.Del(ctx, raw).Err())
				tt.write(t)
				require.True(t, b.client.Exists(ctx, raw).Val() == 1 && b.client.PTTL(ctx, raw).Val() == -1, "the value written, without a TTL")
				r, err := s.AllowN(ctx, "k", 1, l)
				require.NoError(t, err)
				assert.True(t, r.Allowed)
				assert.Equal(t, tt.wantRemaining, r.Remaining)
				pttl := b.client.PTTL(ctx, raw).Val()
				assert.True(t, pttl > 0 && pttl <= 2*time.Hour, "PTTL %v; want the hash to expire", pttl)
			})
		}
	})
}

func TestAllowNExpiry(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		raw := b.raw("gcra:k")
		pttl := func() time.Duration { return b.client.PTTL(ctx, raw).Val() }

		for _, n := range []int{0, 11} { // a peek, a denial: nothing written
			_, err := s.AllowN(ctx, "k", n, PerHour(10))
			require.NoError(t, err)
			assert.Zero(t, b.client.Exists(ctx, raw).Val(), "n=%d wrote", n)
		}
		_, err := s.AllowN(ctx, "k", 1, PerHour(10))
		require.NoError(t, err)
		assert.InDelta(t, float64(2*time.Hour), float64(pttl()), float64(10*time.Second), "twice the refill time")

		// A shorter limit on the same key never lowers the expiry its
		// longer neighbour needs.
		for range 5 {
			_, err = s.AllowN(ctx, "k", 1, PerSecond(10))
			require.NoError(t, err)
		}
		assert.InDelta(t, float64(2*time.Hour), float64(pttl()), float64(10*time.Second), "after a shorter limit")

		if b.real() {
			return
		}
		// Past the recorded expiry, a call moves it.
		// The expiry is 30 minutes away after this; 6 tokens of 6 minutes
		// take the TAT past it.
		b.pass(90 * time.Minute)
		for range 6 {
			_, err = s.AllowN(ctx, "k", 1, PerHour(10))
			require.NoError(t, err)
		}
		assert.InDelta(t, float64(2*time.Hour), float64(pttl()), float64(time.Second), "moved")
	})
}

func TestResetRateLimit(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		for _, key := range []string{"login:bob", "a{b}c"} {
			for range 3 {
				_, err := s.AllowN(ctx, key, 1, PerHour(3), PerMinute(10))
				require.NoError(t, err)
				_, err = s.CheckRateLimit(ctx, key, time.Hour, 3)
				require.NoError(t, err)
			}
			r, err := s.AllowN(ctx, key, 1, PerHour(3))
			require.NoError(t, err)
			require.False(t, r.Allowed)

			require.NoError(t, s.ResetRateLimit(ctx, key))
			for _, raw := range []string{b.raw("gcra:" + key), b.raw("ratelimit:" + key)} {
				assert.Zero(t, b.client.Exists(ctx, raw).Val(), "%s left after ResetRateLimit(%q)", raw, key)
			}
			r, err = s.AllowN(ctx, key, 1, PerHour(3), PerMinute(10))
			require.NoError(t, err)
			assert.True(t, r.Allowed)
			assert.Equal(t, 2, r.Remaining, "fresh GCRA state")
			r, err = s.CheckRateLimit(ctx, key, time.Hour, 3)
			require.NoError(t, err)
			assert.Equal(t, 2, r.Remaining, "a fresh window")
		}
		require.ErrorIs(t, s.ResetRateLimit(ctx, ""), ErrInvalidKey)
	})
}

// TestAllowNHighRatesKeepTheBurst: at a rate of a token every few
// nanoseconds, no request takes more than the burst, and the count stays
// exact: the state is precise to a fraction of an emission interval, and
// what counts as a whole token is a fraction of one, at any rate.
func TestAllowNHighRatesKeepTheBurst(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		for _, l := range []Limit{PerSecond(100_000_000), {Rate: 100_000_000, Period: time.Second, Burst: 1000}, PerSecond(1_000_000)} {
			key := "fast:" + l.name()
			r, err := s.AllowN(ctx, key, l.burst()+1, l)
			require.NoError(t, err)
			assert.False(t, r.Allowed, "AllowN(burst+1) under %v on a fresh bucket", l.name())
			r, err = s.AllowN(ctx, key, l.burst(), l)
			require.NoError(t, err)
			assert.True(t, r.Allowed, "AllowN(burst) under %v on a fresh bucket", l.name())
			assert.Zero(t, r.Remaining, "Remaining after the whole burst under %v", l.name())
		}
		if b.real() {
			return // tokens come back every few nanoseconds on a real clock
		}
		// The server's clock stands still: exactly the burst, one at a time.
		for _, l := range []Limit{{Rate: 100_000_000, Period: time.Second, Burst: 10}, {Rate: 3_000_000, Period: time.Second, Burst: 7}} {
			allowed := 0
			for i := range 3 * l.Burst {
				r, err := s.AllowN(ctx, "one:"+l.name(), 1, l)
				require.NoError(t, err)
				if r.Allowed {
					allowed++
					assert.Equal(t, l.Burst-1-i, r.Remaining, "Remaining of request %d under %v", i, l.name())
				}
			}
			assert.Equal(t, l.Burst, allowed, "requests of 1 allowed under %v", l.name())
		}
	})
}

// TestLimitsThatOverflowAreRefused: a limit whose arithmetic cannot be done
// (an emission interval below a nanosecond, a burst beyond what the
// script counts exactly) fails with ErrInvalidArgument before anything is
// sent, instead of answering with a Remaining of MinInt64.
func TestLimitsThatOverflowAreRefused(t *testing.T) {
	t.Parallel()
	if strconv.IntSize < 64 {
		t.Skip("rates and bursts beyond 2^31 need a 64-bit int")
	}
	// Variables, not constants, so that the file builds where int has 32 bits.
	maxInt, burst40, rate41 := math.MaxInt, int64(1)<<40, int64(1)<<41
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	for name, l := range map[string]Limit{
		"MaxInt rate":       {Rate: maxInt, Period: time.Second},
		"PerSecond(MaxInt)": PerSecond(maxInt),
		"huge burst":        {Rate: int(rate41), Period: time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := s.AllowN(ctx, "k", 1, l)
			require.ErrorIs(t, err, ErrInvalidArgument)
			assert.Equal(t, RateLimitResult{}, r)
		})
	}
	assert.Empty(t, b.mr.Keys(), "invalid calls wrote")
	for _, l := range []Limit{
		{Rate: 1_000_000_000, Period: time.Second, Burst: int(burst40)},
		{Rate: maxInt, Period: time.Second, Burst: 10},
		PerSecond(1 << 30), // a gigabyte a second, counted in bytes
	} {
		r, err := s.AllowN(ctx, "k:"+l.name(), 3, l)
		require.NoError(t, err, "AllowN under %v", l.name())
		assert.True(t, r.Allowed)
		assert.Equal(t, l.burst()-3, r.Remaining, "Remaining under %v", l.name())
		assert.GreaterOrEqual(t, r.ResetAfter, time.Duration(0))
	}
}

// TestAllowNReadsTheEarlierStateFormat: a field holding a TAT in seconds
// since 2017, as earlier versions wrote it, keeps its meaning; the next
// allowed call rewrites it in the current form.
func TestAllowNReadsTheEarlierStateFormat(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		s := b.service(t, Options{})
		ctx := ctxT(t)
		raw := b.raw("gcra:k")
		// One token of PerHour(4) (15 minutes each) used, 5 minutes ago.
		tat := b.serverTime(t).Add(10 * time.Minute).Sub(time.Date(2017, 1, 1, 0, 0, 0, 0, time.UTC)).Seconds()
		require.NoError(t, b.client.HSet(ctx, raw, "4/3600/4", strconv.FormatFloat(tat, 'f', -1, 64)).Err())
		r, err := s.AllowN(ctx, "k", 0, PerHour(4))
		require.NoError(t, err)
		assert.Equal(t, 3, r.Remaining, "a TAT written by an earlier version")
		assert.InDelta(t, float64(10*time.Minute), float64(r.ResetAfter), float64(time.Second))
		r, err = s.AllowN(ctx, "k", 1, PerHour(4))
		require.NoError(t, err)
		assert.Equal(t, 2, r.Remaining)
		assert.Regexp(t, `^\d+ \d+(\.\d+)?$`, b.client.HGet(ctx, raw, "4/3600/4").Val(), "the field after a write")
		r, err = s.AllowN(ctx, "k", 0, PerHour(4))
		require.NoError(t, err)
		assert.Equal(t, 2, r.Remaining)
		assert.InDelta(t, float64(25*time.Minute), float64(r.ResetAfter), float64(time.Second))
	})
}

// TestAllowNNeverLetsATokenThroughEarly: a token that has not fully come
// back does not count, whatever the emission interval: 9 µs into a 10 µs
// interval is not enough (a tolerance of a whole microsecond let it
// through).
func TestAllowNNeverLetsATokenThroughEarly(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	l := Limit{Rate: 100_000, Period: time.Second, Burst: 1} // a token every 10 µs
	r, err := s.AllowN(ctx, "k", 1, l)
	require.NoError(t, err)
	require.True(t, r.Allowed)
	b.pass(9 * time.Microsecond)
	r, err = s.AllowN(ctx, "k", 1, l)
	require.NoError(t, err)
	assert.False(t, r.Allowed, "9 µs into a 10 µs interval")
	assert.Equal(t, time.Microsecond, r.RetryAfter)
	b.pass(time.Microsecond)
	r, err = s.AllowN(ctx, "k", 1, l)
	require.NoError(t, err)
	assert.True(t, r.Allowed, "after the whole interval")
}

// shl is 1<<n computed at run time, so that a file using it builds where
// int has 32 bits (where it overflows to 0; the tests needing it skip there).
func shl(n int) int { return 1 << n }
