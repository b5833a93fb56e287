package redisservice

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limit is a GCRA (leaky bucket) limit: Rate requests per Period on
// average, with bursts of up to Burst at once. The zero Burst means Burst
// = Rate. Use it with [Service.AllowN] and [RateLimitConfig.Limits]. A
// limit whose full burst takes longer than a Duration holds
// (Burst×Period/Rate) is refused with [ErrInvalidArgument], as is any
// field outside the range its comment gives.
type Limit struct {
	// Rate is how many requests Period allows on average; > 0.
	Rate int

	// Period is the time over which Rate requests are allowed; at least
	// one millisecond.
	Period time.Duration

	// Burst is how many requests may arrive at once after a quiet spell,
	// and the largest Remaining; 0 to 2^40. The default, 0, is Rate.
	Burst int
}

// PerSecond returns a Limit of rate requests per second, with bursts of
// rate.
func PerSecond(rate int) Limit { return Limit{Rate: rate, Period: time.Second, Burst: rate} }

// PerMinute returns a Limit of rate requests per minute, with bursts of
// rate.
func PerMinute(rate int) Limit { return Limit{Rate: rate, Period: time.Minute, Burst: rate} }

// PerHour returns a Limit of rate requests per hour, with bursts of rate.
func PerHour(rate int) Limit { return Limit{Rate: rate, Period: time.Hour, Burst: rate} }

// burst returns l's burst with the default applied.
func (l Limit) burst() int {
	if l.Burst == 0 {
		return l.Rate
	}
	return l.Burst
}

// interval is the emission interval in seconds: the time one request's
// token takes to come back.
func (l Limit) interval() float64 { return l.Period.Seconds() / float64(l.Rate) }

// name is l's name in headers and default middleware names: "10/1s", or
// "10/1s+20" when the burst is not the rate.
func (l Limit) name() string {
	if l.burst() == l.Rate {
		return fmt.Sprintf("%d/%v", l.Rate, l.Period)
	}
	return fmt.Sprintf("%d/%v+%d", l.Rate, l.Period, l.burst())
}

// refill is the time n tokens take to come back, n×Period/Rate rounded
// up, saturating rather than overflowing.
func (l Limit) refill(n int) time.Duration {
	hi, lo := bits.Mul64(uint64(n), uint64(l.Period))
	if hi >= uint64(l.Rate) {
		return math.MaxInt64
	}
	q, r := bits.Div64(hi, lo, uint64(l.Rate))
	if r > 0 {
		q++
	}
	return time.Duration(min(q, math.MaxInt64))
}

// maxBurst is the largest burst: the script counts tokens in doubles,
// exactly to within a hundredth of a token up to it.
const maxBurst = 1 << 40

// check reports what makes l unusable, if anything.
func (l Limit) check() error {
	switch {
	case l.Rate <= 0:
		return fmt.Errorf("%w: limit rate %d <= 0", ErrInvalidArgument, l.Rate)
	case l.Period <= 0:
		return fmt.Errorf("%w: limit period %v <= 0", ErrInvalidArgument, l.Period)
	case l.Period < time.Millisecond:
		return fmt.Errorf("%w: limit period %v (want >= 1ms)", ErrInvalidTTL, l.Period)
	case l.Burst < 0:
		return fmt.Errorf("%w: limit burst %d < 0", ErrInvalidArgument, l.Burst)
	case int64(l.burst()) > maxBurst:
		return fmt.Errorf("%w: limit %v: burst above 2^40", ErrInvalidArgument, l.name())
	case float64(l.burst())*float64(l.Period)/float64(l.Rate) > math.MaxInt64:
		return fmt.Errorf("%w: limit %v: a full burst takes longer than a Duration holds", ErrInvalidArgument, l.name())
	}
	return nil
}

// AllowN asks for n tokens for key under every limit given, atomically,
// in one round trip (on a cluster too): allowed only when each limit has
// room for n, and then n is taken from all of them; a denied request takes
// nothing from any. n == 0 only reports the state (Allowed true). The
// state is one hash, "gcra:<key>" (after [Options.KeyPrefix]), a field per
// limit, on the Redis server's clock; it expires within twice its longest
// bucket's refill time (Burst×Period/Rate) of its last use.
//
// The result describes the tightest limit: when denied, the one that keeps
// the request waiting longest; when allowed, the one with the fewest
// tokens left. Limit is its burst, ResetAfter (and ResetAt, on the
// server's clock) the time until its bucket is full, RetryAfter the time
// until n tokens fit under every limit; both capped at 2^53 µs. An n above
// a burst never fits: it is denied, with no error. For one limit the
// answers are redis_rate v10's, except where its rounding loses a whole
// token (README "Rate limiting"); at any rate, no request is let through
// more than a hundredth of a token before its tokens are back.
//
// Invalid input fails before anything is sent, with the zero result: an
// empty key with [ErrInvalidKey], a Period between 0 and 1 ms with
// [ErrInvalidTTL], n < 0, no limit or a limit [Limit] rules out with
// [ErrInvalidArgument]. Retries, fast failure and fallbacks are
// [Service.CheckRateLimit]'s: without an answer, Allowed as for a fresh key
// (an n above a burst denied), or with [Options.RateLimitFailClosed]
// denied, RetryAfter the time n tokens take under the slowest limit.
func (s *Service) AllowN(ctx context.Context, key string, n int, limits ...Limit) (RateLimitResult, error) {
	r, _, err := s.allowN(ctx, key, n, limits)
	return r, err
}

// allowN is AllowN that also returns the index in limits of the limit the
// result describes.
func (s *Service) allowN(ctx context.Context, key string, n int, limits []Limit) (RateLimitResult, int, error) {
	const op = "ratelimit"
	if err := checkAllowArgs(key, n, limits); err != nil {
		return RateLimitResult{}, 0, invalid(op, key, err)
	}
	args := make([]any, 4, 4+3*len(limits))
	args[0], args[1], args[2], args[3] = n, "", 0, len(limits)
	for _, l := range limits {
		args = append(args, l.Rate, l.Period.Seconds(), l.burst())
	}
	var reply gcraReply
	_, err := call(s, ctx, op, key, func(ctx context.Context) (struct{}, error) {
		err := s.runOnce(ctx, gcraArgs, s.gcraKey(key), reply[:], args...)
		if err == nil {
			err = reply.check(len(limits))
		}
		return struct{}{}, err
	})
	if err != nil {
		r, i := s.allowFallback(n, limits)
		return r, i, err
	}
	i := reply.index()
	r := reply.result(limits[i])
	s.tel.RateLimited(ctx, r.Allowed, false)
	return r, i, nil
}

// gcraReply is gcraScript's reply (see there).
type gcraReply [7]int64

// check reports a reply that names none of the script's limits of
// which there were count.
func (r *gcraReply) check(count int) error {
	if r[4] < 0 || r[4] >= int64(count) {
		return fmt.Errorf("%w: script reply names limit %d of %d", ErrDecode, r[4], count)
	}
	return nil
}

// allowed reports whether the reply allows the request.
func (r *gcraReply) allowed() bool { return r[0] == 1 }

// index is the position, among the script's limits, of the one the reply
// describes.
func (r *gcraReply) index() int { return int(r[4]) }

// result is the reply as a RateLimitResult, which describes l.
func (r *gcraReply) result(l Limit) RateLimitResult {
	reset := time.Duration(r[3]) * time.Microsecond
	res := RateLimitResult{
		Allowed:    r.allowed(),
		Limit:      l.burst(),
		Remaining:  int(r[1]),
		ResetAt:    time.Unix(r[5], r[6]*int64(time.Microsecond)).Add(reset),
		ResetAfter: reset,
	}
	if !res.Allowed {
		res.RetryAfter = max(time.Duration(r[2])*time.Microsecond, time.Microsecond)
	}
	return res
}

// checkAllowArgs validates the arguments of AllowN.
func checkAllowArgs(key string, n int, limits []Limit) error {
	switch {
	case key == "":
		return ErrInvalidKey
	case n < 0:
		return fmt.Errorf("%w: n %d < 0", ErrInvalidArgument, n)
	case len(limits) == 0:
		return fmt.Errorf("%w: no limit", ErrInvalidArgument)
	}
	for _, l := range limits {
		if err := l.check(); err != nil {
			return err
		}
	}
	return nil
}

// allowFallback is AllowN's result when Redis gave no answer, and the
// index of the limit it describes: fail open as for a fresh key (but an n
// above a burst is denied), or closed.
func (s *Service) allowFallback(n int, limits []Limit) (RateLimitResult, int) {
	tightest, slowest := 0, 0
	for i, l := range limits {
		if l.burst()-n < limits[tightest].burst()-n {
			tightest = i
		}
		if l.interval() > limits[slowest].interval() {
			slowest = i
		}
	}
	l := limits[tightest]
	r := RateLimitResult{Allowed: true, Limit: l.burst(), Remaining: l.burst() - n, ResetAfter: l.refill(n)}
	switch {
	case s.opts.RateLimitFailClosed:
		l, tightest = limits[slowest], slowest
		r = RateLimitResult{Limit: l.burst(), RetryAfter: max(l.refill(max(n, 1)), time.Microsecond)}
		r.ResetAfter = r.RetryAfter
	case r.Remaining < 0:
		// n can never fit: denied, with the RetryAfter AllowN would give
		// for a fresh key.
		r.Allowed, r.Remaining = false, 0
		r.RetryAfter = l.refill(n - l.burst())
	}
	r.ResetAt = time.Now().Add(r.ResetAfter)
	s.tel.RateLimited(context.Background(), r.Allowed, true)
	return r, tightest
}

// ResetRateLimit forgets key's state under every limit and window: its
// GCRA hash ("gcra:<key>", every limit [Service.AllowN] was given for key)
// and its fixed-window counter ("ratelimit:<key>", whatever window
// [Service.CheckRateLimit] used) are deleted, so its next request starts
// fresh. For a [Service.RateLimitMiddleware] bucket, key is
// "<Name>:<client key>". It is one round trip on a single node; on a
// cluster the two keys may live on two masters, each asked once, in
// parallel. A failure returns the error; either key may then be left.
func (s *Service) ResetRateLimit(ctx context.Context, key string) error {
	const op = "resetratelimit"
	if key == "" {
		return invalid(op, key, ErrInvalidKey)
	}
	_, err := call(s, ctx, op, key, func(ctx context.Context) (struct{}, error) {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Del(ctx, s.gcraKey(key))
			p.Del(ctx, s.rateLimitKey(key))
			return nil
		})
		return struct{}{}, err
	})
	return err
}
