package redisservice

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// UpdateSession, RenewSessionID and DestroySession write a session
// through one script, sessionCASScript: a check-and-set on the session's
// bytes that a lost reply, sent again by go-redis, applies once.

// Outcomes of sessionCASScript.
const (
	casMissing = 0  // no such session
	casChanged = -1 // the session's bytes are not those expected
	casDone    = 1
)

// sessionCASScript writes a session, by mode (ARGV[2]): 'set' replaces
// it with ARGV[3], keeping its TTL, and 'del' deletes it, only if its
// stored bytes are still ARGV[1]; 'destroy' deletes it whatever it holds.
// A 'set' also goes ahead when the stored bytes differ from ARGV[1] only
// in the top-level lastActivity value, in the layout both services write
// (userId, email, role, createdAt, lastActivity first), and ARGV[3] keeps
// ARGV[1]'s lastActivity: that is a concurrent UpdateSessionActivity (or
// an update of lastActivity alone), whose lastActivity is kept. When
// ARGV[3] changes lastActivity too, any change is a conflict. Each write
// records its token ARGV[4] in KEYS[2] for ARGV[5] ms; a script that
// finds its token there ran already (its reply was lost and go-redis sent
// it again) and answers done without writing. It returns 0 when the
// session is missing, -1 when it holds other bytes, else {1, the
// session's PTTL afterwards, the deleted bytes for 'destroy' or an empty
// string}.
//
// KEYS[1]: the session; KEYS[2]: its recent write tokens (a sorted set
// by expiry, in the session's slot).
var sessionCASScript = redis.NewScript(`
if redis.call('ZSCORE', KEYS[2], ARGV[4]) then
	return {1, redis.call('PTTL', KEYS[1]), ''}
end
local raw = redis.call('GET', KEYS[1])
if not raw then
	return 0
end
local mode, doc = ARGV[2], ARGV[3]
if mode ~= 'destroy' and raw ~= ARGV[1] then
	if mode ~= 'set' then
		return -1
	end
	local match, sub = string.match, string.sub
	local head = '^{"userId":"[^"\\]*","email":"[^"\\]*","role":"[^"\\]*","createdAt":"[^"\\]*","lastActivity":()"[^"\\]*"()'
	local r1, r2 = match(raw, head)
	local w1, w2 = match(ARGV[1], head)
	local n1, n2 = match(doc, head)
	if not (r1 and w1 and n1) or sub(raw, 1, r1 - 1) ~= sub(ARGV[1], 1, w1 - 1) or sub(raw, r2) ~= sub(ARGV[1], w2) or sub(doc, n1, n2 - 1) ~= sub(ARGV[1], w1, w2 - 1) then
		return -1
	end
	doc = sub(doc, 1, n1 - 1) .. sub(raw, r1, r2 - 1) .. sub(doc, n2)
end
local ttl = -2
if mode == 'set' then
	redis.call('SET', KEYS[1], doc, 'KEEPTTL')
	ttl = redis.call('PTTL', KEYS[1])
else
	redis.call('DEL', KEYS[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
if mode == 'destroy' then
	return {1, ttl, raw}
end
return {1, ttl, ''}
`)

// compareAndSet replaces session id's bytes was with b, keeping its TTL,
// if it still holds was. It returns the outcome and, when done, the TTL
// left (0: none).
func (s *Service) compareAndSet(ctx context.Context, op, id string, was, b []byte) (int, time.Duration, error) {
	status, ttl, _, err := s.runCAS(ctx, op, id, was, "set", b)
	return status, ttl, err
}

// compareAndDelete deletes session id if it still holds was.
func (s *Service) compareAndDelete(ctx context.Context, op, id string, was []byte) (int, error) {
	status, _, _, err := s.runCAS(ctx, op, id, was, "del", nil)
	return status, err
}

// runCAS runs sessionCASScript once, under a new write token, so that
// go-redis sending it again after a lost reply writes nothing more. It
// returns the outcome, the TTL left (0: none) and, for "destroy", the
// deleted bytes (nil when a lost reply hid them).
func (s *Service) runCAS(ctx context.Context, op, id string, was []byte, mode string, b []byte) (int, time.Duration, []byte, error) {
	key := s.key(sessionKey(id))
	keys := []string{key, sameSlotKey(key, sessionWritesSuffix)}
	token := newWriteToken()
	reply, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (any, error) {
		return sessionCASScript.Run(ctx, s.rdb, keys, was, mode, b, token, writeTokenKeep(ctx)).Result()
	})
	if err != nil {
		return 0, 0, nil, err
	}
	switch r := reply.(type) {
	case int64:
		return int(r), 0, nil, nil
	case []any:
		if len(r) == 3 {
			ttl, _ := r[1].(int64)
			raw, _ := r[2].(string)
			var gone []byte
			if raw != "" {
				gone = []byte(raw)
			}
			return casDone, time.Duration(max(ttl, 0)) * time.Millisecond, gone, nil
		}
	}
	return 0, 0, nil, s.fail(ctx, op, sessionDisplayKey, fmt.Errorf("%w: unexpected script reply %T", ErrDecode, reply))
}
