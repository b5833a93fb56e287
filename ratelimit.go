package redisservice

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RateLimitResult is the outcome of one [Service.CheckRateLimit] call.
type RateLimitResult struct {
	// Allowed reports whether the request fits in the current window.
	Allowed bool

	// Limit is the number of requests allowed per window, as passed in.
	Limit int

	// Remaining is how many more requests the current window allows after
	// this one; 0 when denied.
	Remaining int

	// ResetAt is the end of the current window on the Redis server's
	// clock, which every process sharing the limit agrees on. Compare
	// ResetAfter when the local clock may be skewed.
	ResetAt time.Time

	// ResetAfter is the time left in the current window, as measured by
	// the Redis server (millisecond precision). It does not depend on the
	// local clock.
	ResetAfter time.Duration

	// RetryAfter is how long a denied caller should wait before the
	// window ends: 0 < RetryAfter <= window when denied, 0 when allowed.
	RetryAfter time.Duration
}

// rateLimitScript counts one request in a fixed window. It increments the
// window's counter and gives a counter without a TTL (a new window, or a
// key some older code left behind) or with a TTL longer than the window
// the window as its TTL, in the same atomic step, so no counter is ever
// left to live forever and concurrent callers are serialised by Redis. A
// foreign value at the key that INCR refuses (not an integer, or not a
// string) is replaced by a new window, so that nothing written there can
// turn the limit off. It returns the count including this request, the
// window's remaining PTTL and the server's TIME.
//
// KEYS[1]: the counter. ARGV[1]: the window in milliseconds.
var rateLimitScript = redis.NewScript(rateLimitLua)

// rateLimitArgs is rateLimitScript as command arguments.
var rateLimitArgs = scriptArgs(rateLimitScript, rateLimitLua)

// rateLimitLua is the source of rateLimitScript, for EVAL after NOSCRIPT.
const rateLimitLua = `
local count = redis.pcall('INCR', KEYS[1])
if type(count) == 'table' then
	redis.call('DEL', KEYS[1])
	count = redis.call('INCR', KEYS[1])
end
local window = tonumber(ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl > window then
	redis.call('PEXPIRE', KEYS[1], ARGV[1])
	ttl = window
end
local now = redis.call('TIME')
return {count, ttl, tonumber(now[1]), tonumber(now[2])}
`

// CheckRateLimit counts one request for identifier against a fixed window
// of the given length that allows limit requests, and reports whether
// this request is allowed. The counter lives at "ratelimit:<identifier>"
// (after [Options.KeyPrefix]); the window starts with the first request
// and lasts window, truncated to whole milliseconds. One Lua script sets
// the count and the window's expiry together in one round trip, so
// concurrent callers across processes never get more than limit requests
// through per window, and a counter never outlives its window. Denied
// requests are counted too; they do not extend the window. A value at the
// key that is not a counter is replaced or repaired, never a reason to
// fail. The script runs at most once per call, whatever the client's
// MaxRetries (docs/rate-limits.md, "Failures").
//
// Invalid arguments are rejected before anything is sent, with the zero
// result (Allowed false) and an error: an empty identifier with
// [ErrInvalidKey], a limit <= 0 or a window <= 0 with [ErrInvalidArgument],
// and a window between 0 and 1ms with [ErrInvalidTTL].
//
// When Redis cannot give an answer (unreachable, timed out, closed, or
// known to be down: [ErrUnavailable] at once), it returns the error with
// a fallback: by default it fails open (Allowed true, Remaining limit-1,
// as for the first request of a new window); with
// [Options.RateLimitFailClosed] it is denied (Remaining 0, RetryAfter
// window). Either way ResetAt is the local time plus window.
func (s *Service) CheckRateLimit(ctx context.Context, identifier string, window time.Duration, limit int) (RateLimitResult, error) {
	const op = "ratelimit"
	if err := checkRateLimitArgs(identifier, window, limit); err != nil {
		return RateLimitResult{}, invalid(op, identifier, err)
	}
	window = window.Truncate(time.Millisecond)
	var reply [4]int64
	_, err := call(s, ctx, op, identifier, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, s.runOnce(ctx, rateLimitArgs, s.rateLimitKey(identifier), reply[:], window.Milliseconds())
	})
	if err != nil {
		return s.rateLimitFallback(window, limit), err
	}
	count, ttl := reply[0], time.Duration(reply[1])*time.Millisecond
	serverNow := time.Unix(reply[2], reply[3]*int64(time.Microsecond))
	r := RateLimitResult{
		Allowed:    count <= int64(limit),
		Limit:      limit,
		ResetAt:    serverNow.Add(ttl),
		ResetAfter: ttl,
	}
	if r.Allowed {
		r.Remaining = limit - int(count)
	} else {
		r.RetryAfter = max(ttl, time.Millisecond)
	}
	s.tel.RateLimited(ctx, r.Allowed, false)
	return r, nil
}

// checkRateLimitArgs validates the arguments of CheckRateLimit.
func checkRateLimitArgs(identifier string, window time.Duration, limit int) error {
	switch {
	case identifier == "":
		return ErrInvalidKey
	case limit <= 0:
		return fmt.Errorf("%w: limit %d <= 0", ErrInvalidArgument, limit)
	case window <= 0:
		return fmt.Errorf("%w: window %v <= 0", ErrInvalidArgument, window)
	case window < time.Millisecond:
		return fmt.Errorf("%w: window %v (want >= 1ms)", ErrInvalidTTL, window)
	}
	return nil
}

// rateLimitFallback is CheckRateLimit's result when Redis gave no answer.
func (s *Service) rateLimitFallback(window time.Duration, limit int) RateLimitResult {
	r := RateLimitResult{
		Allowed:    true,
		Limit:      limit,
		Remaining:  limit - 1,
		ResetAt:    time.Now().Add(window),
		ResetAfter: window,
	}
	if s.opts.RateLimitFailClosed {
		r.Allowed, r.Remaining, r.RetryAfter = false, 0, window
	}
	s.tel.RateLimited(context.Background(), r.Allowed, true)
	return r
}
