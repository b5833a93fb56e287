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

// gcraScript decides n tokens for one key under several GCRA limits, on
// the server's clock, all or nothing. Each limit's theoretical arrival
// time (TAT) is field "<rate>/<period s>/<burst>" of one hash (one key,
// one cluster slot). A foreign value at the key is replaced, and a field
// that is not a plausible TAT counts as a full bucket, so that nothing
// written there turns the limit off. Only an allowed call with n > 0
// writes: every TAT moves by n emission intervals.
//
// A field holds "<W> <R>": the TIME of its write in µs since 2017 (whole,
// exact in a double) and the TAT's distance from it in µs, so the
// arithmetic handles amounts of a bucket's size, not of the date, and
// stays exact at any rate; one number is an earlier version's TAT, in
// seconds since 2017. Within a millionth of a token (plus 5e-15 of the
// bucket, for rounding) of fitting counts as fitting, so that a full
// bucket's exact count is not lost to rounding.
//
// Field "exp" records the hash's expiry (µs since 2017). While every TAT
// is before it and the hash has a TTL, an allowed call writes its TATs
// alone; otherwise the expiry is set to twice the longest refill time.
//
// KEYS[1]: the hash. ARGV[1]: n; then rate, period (seconds), burst per
// limit. It returns {allowed, remaining, retry after (µs), reset after
// (µs), index of the tightest limit (0-based), TIME seconds, TIME µs},
// durations capped at 2^53 µs (about 285 years).
var gcraScript = redis.NewScript(gcraLua)

// gcraArgs is gcraScript as command arguments.
var gcraArgs = scriptArgs(gcraScript, gcraLua)

// gcraLua is the source of gcraScript, for EVAL after NOSCRIPT.
const gcraLua = `
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = (t[1] - 1483228800) * 1000000 + t[2]
local count = (#ARGV - 1) / 3
local get = {'HMGET', KEYS[1]}
for i = 1, count do
	local j = 3 * i - 1
	get[i + 2] = ARGV[j] .. '/' .. ARGV[j + 1] .. '/' .. ARGV[j + 2]
end
get[count + 3] = 'exp'
local vals = redis.pcall(unpack(get))
if vals.err then
	redis.call('DEL', KEYS[1])
	vals = {}
end
local set = {'HSET', KEYS[1]}
local allowed, best, remaining, retry, reset = 1, 1, -1, 0, 0
local latest, refill = 0, 0
for i = 1, count do
	local j = 3 * i - 1
	local ei = ARGV[j + 1] * 1000000 / ARGV[j]
	local offset = ei * ARGV[j + 2]
	if offset > refill then refill = offset end
	-- tat: the TAT in µs from now.
	local tat, v = 0, vals[i]
	if type(v) == 'string' then
		local w, r = string.match(v, '^(%S+) (%S+)$')
		w, r = tonumber(w), tonumber(r)
		if w and r then
			tat = r - (now - w)
		else
			tat = (tonumber(v) or 0) * 1000000 - now
		end
		if tat ~= tat or tat < 0 or tat > offset + 1000000 then
			tat = 0
		end
	end
	local new = tat + ei * n
	if new > latest then latest = new end
	set[2 * i + 1] = get[i + 2]
	set[2 * i + 2] = new
	-- diff: how long ago the request fitted (negative: how long until).
	local diff = offset - new + ei * 0.000001 + offset * 5e-15
	if diff < 0 then
		if allowed == 1 or -diff > retry then
			best, retry, reset = i, -diff, tat
		end
		allowed = 0
	elseif allowed == 1 then
		local left = math.floor(diff / ei)
		if remaining < 0 or left < remaining or (left == remaining and new > reset) then
			best, remaining, reset = i, left, new
		end
	end
end
if allowed == 1 and n > 0 then
	for i = 1, count do
		set[2 * i + 2] = string.format('%.17g %.17g', now, set[2 * i + 2])
	end
	local exp = tonumber(vals[count + 1])
	-- Past twice the longest refill a Duration holds, exp is not ours.
	local setexp = exp == nil or exp ~= exp or now + latest > exp or exp > now + 4e16
	if not setexp and redis.call('PTTL', KEYS[1]) < 0 then
		setexp = true
	end
	if setexp then
		exp = now + 2 * refill
		set[#set + 1] = 'exp'
		set[#set + 1] = string.format('%.17g', exp)
	end
	redis.call(unpack(set))
	if setexp then
		redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.min(math.ceil(2 * refill / 1000), 9223372036854)))
	end
end
if allowed == 0 then
	remaining = 0
end
local cap = 9007199254740992
return {allowed, remaining, math.min(math.ceil(retry), cap), math.min(math.ceil(reset), cap), best - 1, tonumber(t[1]), tonumber(t[2])}
`

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
	args := make([]any, 1, 1+3*len(limits))
	args[0] = n
	for _, l := range limits {
		args = append(args, l.Rate, l.Period.Seconds(), l.burst())
	}
	var reply [7]int64
	_, err := call(s, ctx, op, key, func(ctx context.Context) (struct{}, error) {
		err := s.runOnce(ctx, gcraArgs, s.gcraKey(key), reply[:], args...)
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
	s.tel.RateLimited(ctx, r.Allowed, false)
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
