package redisservice

import "github.com/redis/go-redis/v9"

// The GCRA scripts. [Service.AllowN] and [Service.AllowAll] decide with
// gcraScript; when AllowAll's keys span cluster slots, gcraRefundScript
// gives back what a slot's keys reserved if another slot denied. Both
// start with gcraReadLua, so that they read the state one way.

// gcraReadLua is the Lua the GCRA scripts share. clock returns the
// server's TIME in µs since 2017 (whole, exact in a double), and its
// seconds and microseconds. distance returns the TAT of a field's value
// as µs from now: 0 for a full bucket, and for a value that is not a
// plausible TAT (missing, garbage, NaN, more than a second past the
// bucket's size offset), so that nothing written there turns a limit off.
// A value is "<W> <R>": the TIME of its write and the TAT's distance from
// it, in µs, so that the arithmetic handles amounts of a bucket's size,
// not of the date; one number is an earlier version's TAT, in seconds
// since 2017.
const gcraReadLua = `
local function clock()
	local t = redis.call('TIME')
	return (t[1] - 1483228800) * 1000000 + t[2], tonumber(t[1]), tonumber(t[2])
end
local function distance(v, now, offset)
	if type(v) ~= 'string' then
		return 0
	end
	local w, r = string.match(v, '^(%S+) (%S+)$')
	w, r = tonumber(w), tonumber(r)
	local tat
	if w and r then
		tat = r - (now - w)
	else
		tat = (tonumber(v) or 0) * 1000000 - now
	end
	if tat ~= tat or tat < 0 or tat > offset + 1000000 then
		return 0
	end
	return tat
end
`

// gcraScript decides n tokens under several GCRA limits of one or more
// keys (one cluster slot), on the server's clock, all or nothing. Each key
// is a hash holding a limit's TAT in field "<rate>/<period s>/<burst>"
// (see gcraReadLua); a foreign value at a key is replaced. Only an allowed
// call with n > 0 writes: every TAT moves by n emission intervals. Within
// a millionth of a token (plus 5e-15 of the bucket, for rounding) of
// fitting counts as fitting, so that a full bucket's exact count is not
// lost to rounding. Field "exp" records a hash's expiry (µs since 2017):
// while every TAT is before it and the hash has a TTL, an allowed call
// writes its TATs alone; otherwise it sets twice the longest refill time.
//
// With a token (AllowAll across slots), an allowed call also records in
// each hash, in field "r:<token>", its expiry (keep ms away) and time,
// then per limit the field, the TAT written, the amount, the limit's
// given-back total "g:<field>" and its size (µs), for gcraRefundScript. A
// call that finds its record ran already (it was sent again): it takes
// nothing more and reports the state.
//
// ARGV: n, token ("" for none), keep (ms), then per key the number of its
// limits and their rate, period (seconds) and burst. It returns {allowed,
// remaining, retry after (µs), reset after (µs), index of the tightest
// limit (0-based), TIME seconds, TIME µs}, durations capped at 2^53 µs.
var gcraScript = redis.NewScript(gcraLua)

// gcraArgs is gcraScript as command arguments.
var gcraArgs = scriptArgs(gcraScript, gcraLua)

// gcraLua is the source of gcraScript, for EVAL after NOSCRIPT.
const gcraLua = gcraReadLua + `
local n, token, keep = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local now, sec, usec = clock()
if token ~= '' and type(redis.pcall('HGET', KEYS[1], 'r:' .. token)) == 'string' then
	n, token = 0, ''
end
local allowed, best, remaining, retry, reset = 1, 1, -1, 0, 0
-- Per key: its HSET, and its expiry field, latest TAT and refill time.
local sets, meta, recs = {}, {}, {}
local a, m = 4, 0
for k = 1, #KEYS do
	local c = tonumber(ARGV[a])
	local get = {'HMGET', KEYS[k]}
	for i = 1, c do
		local j = a + 3 * i - 2
		get[i + 2] = ARGV[j] .. '/' .. ARGV[j + 1] .. '/' .. ARGV[j + 2]
	end
	get[c + 3] = 'exp'
	if token ~= '' then
		for i = 1, c do
			get[c + 3 + i] = 'g:' .. get[i + 2]
		end
		recs[k] = {string.format('%.17g %.17g', now + keep * 1000, now)}
	end
	local vals = redis.pcall(unpack(get))
	if vals.err then
		redis.call('DEL', KEYS[k])
		vals = {}
	end
	local set = {'HSET', KEYS[k]}
	local latest, refill = 0, 0
	for i = 1, c do
		local j = a + 3 * i - 2
		m = m + 1
		local ei = ARGV[j + 1] * 1000000 / ARGV[j]
		local offset = ei * ARGV[j + 2]
		if offset > refill then refill = offset end
		local tat = distance(vals[i], now, offset)
		local new = tat + ei * n
		if new > latest then latest = new end
		set[2 * i + 1] = get[i + 2]
		set[2 * i + 2] = new
		if token ~= '' then
			recs[k][i + 1] = string.format('%s %.17g %.17g %.17g %.17g', get[i + 2], now + new, ei * n, tonumber(vals[c + 1 + i]) or 0, offset)
		end
		-- diff: how long ago the request fitted (negative: how long until).
		local diff = offset - new + ei * 0.000001 + offset * 5e-15
		if diff < 0 then
			if allowed == 1 or -diff > retry then
				best, retry, reset = m, -diff, tat
			end
			allowed = 0
		elseif allowed == 1 then
			local left = math.floor(diff / ei)
			if remaining < 0 or left < remaining or (left == remaining and new > reset) then
				best, remaining, reset = m, left, new
			end
		end
	end
	sets[k] = set
	meta[3 * k - 2], meta[3 * k - 1], meta[3 * k] = vals[c + 1], latest, refill
	a = a + 3 * c + 1
end
if allowed == 1 and n > 0 then
	for k = 1, #KEYS do
		local key, set = KEYS[k], sets[k]
		for i = 4, #set, 2 do
			set[i] = string.format('%.17g %.17g', now, set[i])
		end
		local exp, latest, refill = tonumber(meta[3 * k - 2]), meta[3 * k - 1], meta[3 * k]
		-- Past twice the longest refill a Duration holds, exp is not ours.
		local setexp = exp == nil or exp ~= exp or now + latest > exp or exp > now + 4e16
		if not setexp and redis.call('PTTL', key) < 0 then
			setexp = true
		end
		if setexp then
			exp = now + 2 * refill
			set[#set + 1] = 'exp'
			set[#set + 1] = string.format('%.17g', exp)
		end
		if token ~= '' then
			-- Records whose call ended without removing them are dropped
			-- once a second at most, when there are many.
			if redis.call('HLEN', key) > 128 and (tonumber(redis.call('HGET', key, 'r:')) or 0) < now then
				local all = redis.call('HGETALL', key)
				for i = 1, #all, 2 do
					if string.sub(all[i], 1, 2) == 'r:' and (tonumber(string.match(all[i + 1], '^%S+')) or 0) < now then
						redis.call('HDEL', key, all[i])
					end
				end
				set[#set + 1] = 'r:'
				set[#set + 1] = string.format('%.17g', now + 1000000)
			end
			set[#set + 1] = 'r:' .. token
			set[#set + 1] = table.concat(recs[k], ' ')
		end
		redis.call(unpack(set))
		if setexp then
			redis.call('PEXPIRE', key, string.format('%.0f', math.min(math.ceil(2 * refill / 1000), 9223372036854)))
		end
	end
end
if allowed == 0 then
	remaining = 0
end
local cap = 9007199254740992
return {allowed, remaining, math.min(math.ceil(retry), cap), math.min(math.ceil(reset), cap), best - 1, sec, usec}
`

// gcraRefundScript gives back what gcraScript took under token ARGV[1]
// from each key, as its record there says, and deletes the record. A TAT
// is a queue drained at one µs per µs; the reserved amount drains once
// what was ahead of it has, and not before it was taken. What others gave
// back since ("g:<field>" grows by each amount given back) may all have
// been ahead of it, so it may have drained from max(its time, its start
// less that) on: the rest is given back. That is never more than is still
// there, so no call admits more than a limit allows, and exact while no
// other call gives back tokens of the limit. Without a record nothing is
// given back: the call never took (denied, or not run yet), gave back
// already, or the state was reset. A hash left with full buckets alone is
// deleted.
//
// With keep > 0 (ms; ARGV[2]) the reservation's outcome was unknown, and
// it may still run: each key then keeps an empty record for keep ms, so
// that a late gcraScript finds it and takes nothing. It returns 1.
var gcraRefundScript = redis.NewScript(gcraRefundLua)

// gcraRefundArgs is gcraRefundScript as command arguments.
var gcraRefundArgs = scriptArgs(gcraRefundScript, gcraRefundLua)

// gcraRefundLua is the source of gcraRefundScript.
const gcraRefundLua = gcraReadLua + `
local now = clock()
local f, keep = 'r:' .. ARGV[1], tonumber(ARGV[2])
for k = 1, #KEYS do
	local key = KEYS[k]
	local rec = redis.pcall('HGET', key, f)
	if type(rec) == 'string' then
		local w = {}
		for x in string.gmatch(rec, '%S+') do
			w[#w + 1] = x
		end
		local t0 = tonumber(w[2])
		for j = 3, #w - 4, 5 do
			local fld, e0, amt, c0, offset = w[j], tonumber(w[j + 1]), tonumber(w[j + 2]), tonumber(w[j + 3]), tonumber(w[j + 4])
			if t0 and e0 and amt and c0 and offset then
				local v = redis.call('HMGET', key, fld, 'g:' .. fld)
				local tat = distance(v[1], now, offset)
				local given = tonumber(v[2]) or 0
				-- The amount drains from max(t0, its start less what was
				-- given back since) at the earliest.
				local back = math.min(amt - math.max(0, now - math.max(t0, e0 - amt - (given - c0))), tat)
				if given >= c0 and back > 0 then
					redis.call('HSET', key, fld, string.format('%.17g %.17g', now, tat - back), 'g:' .. fld, string.format('%.17g', given + back))
				end
			end
		end
	end
	if keep > 0 and type(rec) ~= 'table' then
		redis.call('HSET', key, f, string.format('%.17g', now + keep * 1000))
		if redis.call('PTTL', key) < 0 then
			redis.call('PEXPIRE', key, keep)
		end
	elseif type(rec) == 'string' then
		redis.call('HDEL', key, f)
		-- A hash of full buckets is no hash: drop it, and the denial
		-- leaves nothing behind.
		local all, full = redis.call('HGETALL', key), true
		for i = 1, #all, 2 do
			local p = string.sub(all[i], 1, 2)
			if all[i] ~= 'exp' and p ~= 'g:' and (p == 'r:' or distance(all[i + 1], now, math.huge) > 0) then
				full = false
				break
			end
		end
		if full then
			redis.call('DEL', key)
		end
	end
end
return 1
`
