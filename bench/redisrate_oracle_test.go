package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// TestAllowNMatchesRedisRate replays scripted request sequences against
// Service.AllowN and redis_rate's AllowN on the same redis-server, each
// request sent to both one after the other, and compares every answer
// (durations to within the time between the two calls and 1 ms):
// equal, except that on a full bucket AllowN gives the exact count where
// redis_rate's rounding may give one less (see AllowN).
// Requests fall half a token away from every boundary of the GCRA state,
// so that the few hundred microseconds between the two calls (and sleep
// overshoot below half a token) cannot change an answer: after each
// request that found the bucket full (the state's new origin), the
// schedule moves by half a token.
func TestAllowNMatchesRedisRate(t *testing.T) {
	s := newService(t, redisservice.Options{})
	limiter := redis_rate.NewLimiter(s.Client())
	type step struct {
		wait float64 // in emission intervals since the previous request
		n    int
	}
	sequences := []struct {
		name  string
		limit redis_rate.Limit
		steps []step
	}{
		{"burst then steady", redis_rate.Limit{Rate: 5, Period: time.Second, Burst: 5}, []step{
			{0, 1}, {0, 1}, {0, 1}, {0, 1}, {0, 1}, {0, 1}, {0, 1}, // the burst, then denied
			{1, 1}, {0, 1}, {1, 1}, {2, 1}, {0, 1}, {0, 1}, {0, 1},
			{0, 0}, {3, 0}, {0, 2}, {0, 2}, {6, 1},
		}},
		{"cost and burst above rate", redis_rate.Limit{Rate: 4, Period: time.Second, Burst: 6}, []step{
			{0, 3}, {0, 2}, {0, 2}, {1, 2}, {1, 1}, {0, 1}, {2, 3}, {0, 0},
			{0, 7}, {1, 6}, {8, 6}, {0, 1}, {1, 4},
		}},
		{"burst below rate", redis_rate.Limit{Rate: 5, Period: time.Second, Burst: 2}, []step{
			{0, 1}, {0, 1}, {0, 1}, {1, 1}, {0, 1}, {0, 2}, {2, 2}, {0, 3}, {3, 1},
		}},
	}
	for _, seq := range sequences {
		t.Run(seq.name, func(t *testing.T) {
			attempts := 0
		again: // after a step came too late, on a fresh key
			attempts++
			ctx := context.Background()
			lim := redisservice.Limit{Rate: seq.limit.Rate, Period: seq.limit.Period, Burst: seq.limit.Burst}
			key := fmt.Sprintf("bench:oracle:%d", time.Now().UnixNano())
			t.Cleanup(func() {
				_ = s.ResetRateLimit(ctx, key)
				_ = limiter.Reset(ctx, key)
			})
			ei := seq.limit.Period / time.Duration(seq.limit.Rate)
			next := time.Now()
			// originGap is the time between the two calls that last found
			// the bucket full: each limiter's state started at its own call,
			// so their durations differ by up to that much from then on.
			var originGap time.Duration
			for i, st := range seq.steps {
				next = next.Add(time.Duration(st.wait * float64(ei)))
				time.Sleep(time.Until(next))
				sent := time.Now()
				want, err := limiter.AllowN(ctx, key, seq.limit, st.n)
				require.NoError(t, err)
				got, err := s.AllowN(ctx, key, st.n, lim)
				require.NoError(t, err)
				// The durations move with the time between the two calls.
				gap := time.Since(sent)
				tolerance := float64(originGap + gap + time.Millisecond)
				late := time.Since(next)
				what := fmt.Sprintf("step %d (n=%d, %v late)", i, st.n, late)
				if late > ei/4 {
					if attempts < 5 {
						t.Logf("%s: too late to stay away from boundaries on a loaded machine; starting over", what)
						goto again
					}
					require.FailNowf(t, "the machine is too loaded to stay away from boundaries", "%s (%d attempts)", what, attempts)
				}

				// A full bucket (before this request) is the one state where
				// the exact count is a whole number of tokens, and where
				// redis_rate's floating point may land one token below it.
				full := got.Allowed && got.ResetAfter < time.Duration(st.n)*ei+ei/4
				switch {
				case full:
					burst := seq.limit.Burst
					assert.Equal(t, burst-st.n, got.Remaining, "%s: Remaining on a full bucket", what)
					assert.Contains(t, []int{burst - st.n, burst - st.n - 1}, want.Remaining, "%s: redis_rate's Remaining on a full bucket", what)
					assert.True(t, want.Allowed == st.n || st.n == burst, "%s: redis_rate denied %d of %d on a full bucket", what, st.n, burst)
				case st.n > 0:
					assert.Equal(t, want.Allowed == st.n, got.Allowed, "%s: Allowed (redis_rate %+v)", what, want)
					assert.Equal(t, want.Remaining, got.Remaining, "%s: Remaining", what)
				default:
					assert.True(t, got.Allowed, "%s: a peek is allowed", what)
					assert.Equal(t, want.Remaining, got.Remaining, "%s: Remaining", what)
				}
				assert.InDelta(t, float64(want.ResetAfter), float64(got.ResetAfter), tolerance, "%s: ResetAfter", what)
				if want.RetryAfter < 0 || got.Allowed {
					assert.Zero(t, got.RetryAfter, "%s: RetryAfter when allowed", what)
				} else {
					assert.InDelta(t, float64(want.RetryAfter), float64(got.RetryAfter), tolerance, "%s: RetryAfter", what)
				}
				if full && st.n > 0 {
					// This request is the state's new origin; keep the next
					// ones half a token off its grid.
					next = next.Add(ei / 2)
					originGap = gap
				}
			}
		})
	}
}
