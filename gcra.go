package redisservice

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limit is a GCRA (leaky bucket) limit: Rate requests per Period on
// average, with bursts of up to Burst at once. The zero Burst means Burst
// = Rate. Use it with [Service.AllowN] and [RateLimitConfig.Limits].
type Limit struct {
	// Rate is how many requests Period allows on average; > 0.
	Rate int

	// Period is the time over which Rate requests are allowed; at least
	// one millisecond.
	Period time.Duration

	// Burst is how many requests may arrive at once after a quiet spell,
	// and the largest Remaining; >= 0. The default, 0, is Rate.
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

// interval is the emission interval: the time one request's token takes to
// come back.
func (l Limit) interval() time.Duration { return l.Period / time.Duration(l.Rate) }

// name is l's name in headers and default middleware names: "10/1s", or
// "10/1s+20" when the burst is not the rate.
func (l Limit) name() string {
	if l.burst() == l.Rate {
		return fmt.Sprintf("%d/%v", l.Rate, l.Period)
	}
	return fmt.Sprintf("%d/%v+%d", l.Rate, l.Period, l.burst())
}

// refill is the time n tokens take to come back, saturating rather than
// overflowing.
func (l Limit) refill(n int) time.Duration {
	ei := l.interval()
	if ei > 0 && int64(n) > math.MaxInt64/int64(ei) {
		return math.MaxInt64
	}
	return time.Duration(n) * ei
}

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
	case float64(l.burst())*float64(l.Period)/float64(l.Rate) > math.MaxInt64:
		return fmt.Errorf("%w: limit %v: a full burst takes longer than a Duration holds", ErrInvalidArgument, l.name())
	}
	return nil
}

// gcraPrefix starts the name of the hash holding a key's GCRA state, one
// field per limit. It lies outside "ratelimit:", which belongs to
// CheckRateLimit's counters, so no identifier can name it.
const gcraPrefix = "gcra:"

// gcraScript decides n tokens for one key under several GCRA limits, on
// the server's clock, all or nothing. The state of each limit is its
// theoretical arrival time (TAT) in field "<rate>/<period s>/<burst>" of
// one hash, so every limit of a call lives in one key, hence one cluster
// slot. A foreign value at the key (not a hash) is replaced, and a field
// that is not a plausible TAT counts as a full bucket, so that nothing
// written there can turn the limit off. When allowed with n > 0, every
// limit's TAT moves by n emission intervals; a denied call or a peek
// (n == 0) writes nothing.
//
// The hash's expiry is recorded in its field "exp", read with the TATs:
// while every TAT is before it, an allowed call writes its TATs and
// nothing else, as redis_rate's one SET does. Past it, the expiry is set
// to twice the longest bucket's refill time (Burst×Period/Rate) from now,
// so it moves at most once per refill time, is never lowered (the TATs
// it covered are earlier) and lets the hash go within twice that time of
// its last use.
//
// The arithmetic is go-redis/redis_rate v10's, operation for operation
// (seconds since 2017-01-01 as doubles), so that one limit gives its
// answers, except that a request within a microsecond of a whole token
// counts that token, where redis_rate's rounding can land just below it.
//
// KEYS[1]: the hash. ARGV[1]: n; then rate, period (seconds), burst per
// limit. It returns {allowed, remaining, retry after (µs), reset after
// (µs), index of the tightest limit (0-based), TIME seconds, TIME µs};
// the durations are capped at 2^53 µs (about 285 years), which a Duration
// holds.
var gcraScript = redis.NewScript(gcraLua)

// gcraArgs is gcraScript as command arguments.
var gcraArgs = scriptArgs(gcraScript, gcraLua)

// gcraLua is the source of gcraScript, for EVAL after NOSCRIPT.
const gcraLua = `
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = (t[1] - 1483228800) + (t[2] / 1000000)
local count = (#ARGV - 1) / 3
local get = {'HMGET', KEYS[1]}
for i = 1, count do
	local j = 3 * i - 1
	get[i + 2] = ARGV[j] .. '/' .. ARGV[j + 1] .. '/' .. ARGV[j + 2]
end
get[count + 3] = 'exp'
local tats = redis.pcall(unpack(get))
if tats.err then
	redis.call('DEL', KEYS[1])
	tats = {}
end
local set = {'HSET', KEYS[1]}
local allowed, best, remaining, retry, reset = 1, 1, -1, 0, 0
local latest, refill = now, 0
for i = 1, count do
	local j = 3 * i - 1
	local ei = ARGV[j + 1] / ARGV[j]
	local offset = ei * ARGV[j + 2]
	if offset > refill then refill = offset end
	local tat = tonumber(tats[i])
	if tat == nil or tat ~= tat or tat < now or tat > now + offset + 1 then
		tat = now
	end
	local new = tat + ei * n
	if new > latest then latest = new end
	set[2 * i + 1] = get[i + 2]
	set[2 * i + 2] = new
	-- Within a microsecond (and a few rounding steps) of a whole token
	-- counts as the token: a request of the whole burst fits a full bucket.
	local diff = now - (new - offset) + 0.000001 + new * 1e-15
	local left = diff / ei
	if left < 0 then
		if allowed == 1 or -diff > retry then
			best, retry, reset = i, -diff, tat - now
		end
		allowed = 0
	elseif allowed == 1 then
		left = math.floor(left)
		if remaining < 0 or left < remaining or (left == remaining and new - now > reset) then
			best, remaining, reset = i, left, new - now
		end
	end
end
if allowed == 1 and n > 0 then
	local exp = tonumber(tats[count + 1])
	-- Past twice the longest refill a Duration holds, exp is not ours.
	local setexp = exp == nil or exp ~= exp or latest > exp or exp > now + 4e10
	if setexp then
		exp = now + 2 * refill
		set[#set + 1] = 'exp'
		set[#set + 1] = exp
	end
	redis.call(unpack(set))
	if setexp then
		redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.min(math.ceil((exp - now) * 1000), 9223372036854)))
	end
end
if allowed == 0 then
	remaining = 0
end
local cap = 9007199254740992
return {allowed, remaining, math.min(math.ceil(retry * 1000000), cap), math.min(math.ceil(reset * 1000000), cap), best - 1, tonumber(t[1]), tonumber(t[2])}
`

// AllowN asks for n tokens for key under every limit given, atomically,
// in one round trip (on a cluster too): it is allowed only when each limit
// has room for n, and then n is taken from all of them; a denied request
// takes nothing from any. n == 0 only reports the state (Allowed true:
// zero tokens always fit) and takes nothing. The state lives in one hash,
// "gcra:<key>" (after [Options.KeyPrefix]), with a field per limit, on the
// Redis server's clock; the hash expires within twice its longest
// bucket's refill time (Burst×Period/Rate) of its last use. Limits that
// differ in Rate, Period or Burst are separate buckets.
//
// For one limit, the decisions and Remaining are those of
// go-redis/redis_rate v10's AllowN for the same requests, and RetryAfter
// and ResetAfter agree to within a microsecond, with one exception: where
// the exact count is a whole number of tokens (a full bucket, typically),
// redis_rate's floating point can land just below it and report one token
// less (8 left after the first request of PerSecond(10)) or deny a request
// of exactly the burst; AllowN counts to within a microsecond of a token
// as the token, and reports 9 and allows. The result describes the
// tightest limit: when denied, the one that keeps the request waiting
// longest; when allowed, the one with the fewest tokens left. Its Limit is
// that limit's burst (the largest Remaining), ResetAfter the time until
// its bucket is full again and ResetAt the same on the server's clock,
// and RetryAfter, when denied, the time until n tokens fit under every
// limit.
//
// An n above a limit's burst can never fit: it is denied, with no error,
// and RetryAfter is the time until the bucket is full plus n-burst
// emission intervals (redis_rate's figure), which waiting does not
// overcome; split such a request.
//
// RetryAfter and ResetAfter are capped at 2^53 µs (about 285 years).
//
// Invalid input fails before anything is sent, with the zero result
// (Allowed false): an empty key with [ErrInvalidKey]; n < 0, no limit, a
// Rate <= 0, a Period <= 0, a Burst < 0, or a full burst that takes
// longer than a Duration holds (Burst×Period/Rate) with
// [ErrInvalidArgument]; a Period between 0 and 1 ms with [ErrInvalidTTL].
//
// AllowN has [Service.CheckRateLimit]'s retry safety (the script is never
// sent twice after it may have run; it is re-sent as EVAL only after
// NOSCRIPT), its fast failure while Redis is known to be down, and its
// fallbacks: when Redis gives no answer, the error comes with, by
// default, Allowed true and Remaining burst-n of the tightest limit, as
// for a fresh key, except that an n above a burst is still denied; with
// [Options.RateLimitFailClosed], Allowed false with RetryAfter the time n
// tokens take to come back under the slowest limit.
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
	args := make([]any, 1, 1+3*len(limits))
	args[0] = n
	for _, l := range limits {
		args = append(args, l.Rate, l.Period.Seconds(), l.burst())
	}
	var reply [7]int64
	_, err := call(s, ctx, op, key, func(ctx context.Context) (struct{}, error) {
		err := s.runOnce(ctx, gcraArgs, s.prefix+gcraPrefix+key, reply[:], args...)
		if err == nil && (reply[4] < 0 || reply[4] >= int64(len(limits))) {
			err = fmt.Errorf("%w: script reply names limit %d of %d", ErrDecode, reply[4], len(limits))
		}
		return struct{}{}, err
	})
	if err != nil {
		r, i := s.allowFallback(n, limits)
		return r, i, err
	}
	i := int(reply[4])
	reset := time.Duration(reply[3]) * time.Microsecond
	r := RateLimitResult{
		Allowed:    reply[0] == 1,
		Limit:      limits[i].burst(),
		Remaining:  int(reply[1]),
		ResetAt:    time.Unix(reply[5], reply[6]*int64(time.Microsecond)).Add(reset),
		ResetAfter: reset,
	}
	if !r.Allowed {
		r.RetryAfter = max(time.Duration(reply[2])*time.Microsecond, time.Microsecond)
	}
	s.tel.rateLimited(ctx, r.Allowed, false)
	return r, i, nil
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
	s.tel.rateLimited(context.Background(), r.Allowed, true)
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
			p.Del(ctx, s.key(gcraPrefix+key))
			p.Del(ctx, s.key("ratelimit:"+key))
			return nil
		})
		return struct{}{}, err
	})
	return err
}
