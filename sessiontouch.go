package redisservice

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vevurn/redisservice/internal/jsonobj"
)

// UpdateSessionActivity sets the session's LastActivity to now and
// slides its expiry: the session lives for its own idle TTL (the ttl it
// was created with) from now, never past CreatedAt plus
// [Options.SessionMaxLifetime] (as set now, also for sessions created
// before it was set: one past it is deleted, and false returned); a
// session of the original service keeps its remaining TTL. It reports
// whether the session exists. Only the stored "lastActivity" value
// changes: every other byte of the stored JSON stays as stored. It is one
// atomic script on the session's key, so a session destroyed or expired
// a moment earlier is never resurrected and concurrent updates lose
// nothing; a second round trip then moves the session's expiry in its
// user's index, adding the session there when it is missing (a session
// of the original service). When only that second step fails it returns
// true with the error. Two round trips, more when the index is over
// [Options.MaxSessionsPerUser] (see [Service.CreateSession]).
func (s *Service) UpdateSessionActivity(ctx context.Context, id string) (_ bool, err error) {
	const op = "updatesessionactivity"
	ctx, scope := s.tel.Begin(ctx, op, sessionDisplayKey)
	defer scope.End(ctx, &err)
	if !validSessionID(id) {
		return false, invalid(op, sessionDisplayKey, ErrInvalidKey)
	}
	now := s.opts.Now()
	stamp, err := appendTime(nil, fieldLastActivity, now)
	if err != nil {
		return false, invalid(op, sessionDisplayKey, err)
	}
	stamp = stamp[1 : len(stamp)-1]
	reply, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (any, error) {
		return sessionTouchScript.Run(ctx, s.rdb, []string{s.key(sessionKey(id))}, stamp, now.UnixMilli(), s.opts.SessionMaxLifetime.Milliseconds()).Result()
	})
	if err != nil {
		return false, err
	}
	r, ok := reply.([]any)
	if !ok || len(r) != 3 {
		return false, nil // 0: no such session
	}
	rawUID, _ := r[1].(string)
	ttl, _ := r[2].(int64)
	var uid string
	if rawUID == "" || jsonobj.DecodeString([]byte(rawUID), &uid) != nil || uid == "" || ttl <= 0 {
		return true, nil // no index entry to move: no user, or an old session without TTL
	}
	return true, s.indexSession(ctx, op, uid, id, now.Add(time.Duration(ttl)*time.Millisecond))
}

// sessionTouchScript slides one session's expiry, atomically on its
// single key: it replaces the value of the top-level "lastActivity" in
// the stored text (adding the member at the end when there is none) and
// leaves every other byte alone, then gives the key its own idle TTL
// again, no later than its absolute end (expiresAtMs, or createdAt plus
// the lifetime in ARGV[3], whichever is first; past it the session is
// deleted). A "lastActivity" inside a nested value or a string is never
// touched. A repeated member name, or one of the session's own names
// written with an escape, is refused (an error), as Go refuses to read
// it. In the layout both services write (userId, email, role, createdAt,
// lastActivity first; this package's idleTimeoutMs and expiresAtMs last)
// anchored matches find what it needs; any other layout is scanned
// member by member. A missing key stays missing. A session of the
// original service, without idleTimeoutMs, keeps its remaining TTL (or
// none). Run twice, it writes the same again. It returns 0 for a missing
// or ended session, else {1, the userId value as stored (JSON), new PTTL
// or -1}.
//
// KEYS[1]: the session. ARGV: lastActivity (toISOString), now (unix ms),
// maximum lifetime (ms, 0: none).
var sessionTouchScript = redis.NewScript(sessionTouchHead + sessionTouchWrite + `
return {1, uid or '', ttl}
`)

// sessionTouchHead begins the scripts that touch a session
// (sessionTouchScript, sessionLoadScript). It reads KEYS[1] into raw
// (returning 0 when it is missing), finds the members it needs (uid and
// created as stored; la, where the lastActivity value lies; close and n,
// where the object ends and how many members it has), works out the TTL
// a touch gives (ttl; <= 0: keep the key's) and deletes a session past
// its absolute end (returning 0). ARGV[2]: now (unix ms); ARGV[3]: the
// maximum lifetime (ms, 0: none).
const sessionTouchHead = `
local raw = redis.call('GET', KEYS[1])
if not raw then
	return 0
end
local find, byte, sub, match = string.find, string.byte, string.sub, string.match
-- The end of the string whose opening quote is at i.
local function str(i)
	local j = i + 1
	while true do
		local k = find(raw, '["\\]', j)
		if not k then return nil end
		if byte(raw, k) == 34 then return k end
		j = k + 2
	end
end
-- The end of the value that starts at i.
local function value(i)
	local c = byte(raw, i)
	if c == 34 then return str(i) end
	if c == 123 or c == 91 then
		local depth, j = 0, i
		while true do
			local k = find(raw, '[%[%]{}"]', j)
			if not k then return nil end
			local d = byte(raw, k)
			if d == 34 then
				k = str(k)
				if not k then return nil end
			elseif d == 123 or d == 91 then
				depth = depth + 1
			else
				depth = depth - 1
				if depth == 0 then return k end
			end
			j = k + 1
		end
	end
	local k = find(raw, '[%s,}%]]', i)
	if not k then return nil end
	return k - 1
end
-- The unix ms of an RFC 3339 JSON string such as toISOString writes.
local function millis(v)
	local y, mo, d, h, mi, se, rest = match(v or '', '^"(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)(.*)"$')
	if not y then return nil end
	local frac = 0
	local f = match(rest, '^[%.,](%d+)')
	if f then
		frac = tonumber(sub(f .. '00', 1, 3))
		rest = sub(rest, #f + 2)
	end
	local off = 0
	if rest ~= 'Z' then
		local sign, oh, om = match(rest, '^([%+%-])(%d%d):(%d%d)$')
		if not sign then return nil end
		off = (tonumber(oh) * 60 + tonumber(om)) * 60000
		if sign == '-' then off = -off end
	end
	y, mo = tonumber(y), tonumber(mo)
	if mo <= 2 then y = y - 1 end
	local era = math.floor(y / 400)
	local yoe = y - era * 400
	local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + tonumber(d) - 1
	local days = era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
	return ((days * 24 + tonumber(h)) * 60 + tonumber(mi)) * 60000 + tonumber(se) * 1000 + frac - off
end
-- Fast path. A tail ',"idleTimeoutMs":N}' (or with ',"expiresAtMs":N'
-- after it) is the object's last member; the anchored head match finds
-- the first five members when their strings hold no quote or backslash.
-- None of the names read may occur again, nor an escape that could spell
-- one (\u00XX).
local idle, ends
local p = find(raw, ',"idleTimeoutMs":', 1, true)
if p then
	idle = match(raw, '^(%d+)}%s*$', p + 17)
	if not idle then
		idle, ends = match(raw, '^(%d+),"expiresAtMs":(%d+)}%s*$', p + 17)
	end
end
local uid, created, la1, la2 = match(raw, '^{"userId":("[^"\\]*"),"email":"[^"\\]*","role":"[^"\\]*","createdAt":("[^"\\]*"),"lastActivity":()"[^"\\]*"()')
local slow = not uid or find(raw, '\\u00', 1, true)
if not slow then
	slow = find(raw, '"userId"', la2, true) or find(raw, '"createdAt"', la2, true) or find(raw, '"lastActivity"', la2, true)
end
local e = find(raw, '"expiresAtMs"', 1, true)
if not idle then
	slow = slow or find(raw, '"idleTimeoutMs"', 1, true) or e
else
	slow = slow or find(raw, '"idleTimeoutMs"', 1, true) ~= p + 1 or (e and (not ends or e < p))
end
local la, close, n
if slow then
	-- Every top-level member, in order; remember where each name's value is.
	local own = {userId = 1, email = 1, role = 1, createdAt = 1, lastActivity = 1, ip = 1, userAgent = 1, idleTimeoutMs = 1, expiresAtMs = 1}
	local at = {}
	n = 0
	local _, open = find(raw, '^%s*{%s*')
	local i = open and open + 1
	while i do
		local c = byte(raw, i)
		if c == 125 then close = i break end
		if c ~= 34 then break end
		local ke = str(i)
		if not ke then break end
		local _, e = find(raw, '^%s*:%s*', ke + 1)
		if not e then break end
		local ve = value(e + 1)
		if not ve then break end
		local name = sub(raw, i + 1, ke - 1)
		if find(name, '\\', 1, true) then
			local plain = string.gsub(name, '\\u00(%x%x)', function(h) return string.char(tonumber(h, 16)) end)
			if own[plain] then
				return redis.error_reply('ERR stored session spells a member name with an escape')
			end
		end
		if at[name] then
			return redis.error_reply('ERR stored session repeats a member name')
		end
		at[name] = {e + 1, ve}
		n = n + 1
		local sep
		_, e, sep = find(raw, '^%s*([,}])', ve + 1)
		if not e then break end
		if sep == '}' then close = e break end
		_, e = find(raw, '^%s*', e + 1)
		i = e + 1
	end
	if not close then
		return redis.error_reply('ERR stored session is not a JSON object')
	end
	local function text(name)
		local v = at[name]
		return v and sub(raw, v[1], v[2])
	end
	idle, ends, uid, created, la = text('idleTimeoutMs'), text('expiresAtMs'), text('userId'), text('createdAt'), at['lastActivity']
else
	la = {la1, la2 - 1}
end
local ttl = tonumber(idle) or 0
if ttl <= 0 then
	ttl = redis.call('PTTL', KEYS[1])
end
local stop = tonumber(ends) or 0
local life = tonumber(ARGV[3]) or 0
if life > 0 then
	local c = millis(created)
	if c and (stop <= 0 or c + life < stop) then
		stop = c + life
	end
end
if stop > 0 then
	local left = stop - tonumber(ARGV[2])
	if left <= 0 then
		redis.call('DEL', KEYS[1])
		return 0
	end
	if ttl < 0 or left < ttl then
		ttl = left
	end
end
`

// sessionTouchWrite ends a touch: it sets the lastActivity value in raw
// to ARGV[1] (adding the member when there is none) and writes the
// result, doc, back with the TTL ttl (keeping the key's when ttl <= 0).
const sessionTouchWrite = `
local stamp = '"' .. ARGV[1] .. '"'
local doc
if la then
	doc = sub(raw, 1, la[1] - 1) .. stamp .. sub(raw, la[2] + 1)
elseif n == 0 then
	doc = sub(raw, 1, close - 1) .. '"lastActivity":' .. stamp .. sub(raw, close)
else
	doc = sub(raw, 1, close - 1) .. ',"lastActivity":' .. stamp .. sub(raw, close)
end
if ttl > 0 then
	redis.call('SET', KEYS[1], doc, 'PX', ttl)
else
	redis.call('SET', KEYS[1], doc, 'KEEPTTL')
end
`
