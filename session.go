package redisservice

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// SessionData is what a session holds. It is stored as one JSON object
// at "session:<id>" with the field names of the original TypeScript
// service (shown in the tags), so that both can read and update sessions
// the other wrote. This package writes times as JavaScript's toISOString
// does (UTC, milliseconds). It also stores "idleTimeoutMs" and, under
// [Options.SessionMaxLifetime], "expiresAtMs" in the object. SessionData
// holds a map, so it cannot be compared with ==.
type SessionData struct {
	UserID       string    `json:"userId"`
	Email        string    `json:"email"`
	Role         string    `json:"role"`
	CreatedAt    time.Time `json:"createdAt"`
	LastActivity time.Time `json:"lastActivity"`
	IP           string    `json:"ip"`
	UserAgent    string    `json:"userAgent"`

	// Values holds the application's own fields (cart, permissions, CSRF
	// token, ...). They are stored at the top level of the session's JSON
	// object, beside the seven fields, exactly as given, and come back
	// exactly as stored: byte for byte, including fields that another
	// writer (the original service) put there. The seven fields' names are
	// never keys here, nor are "idleTimeoutMs" and "expiresAtMs"; each
	// value must be one valid JSON value. GetSession returns nil when the
	// session has no such fields. encoding/json skips Values: the tags
	// above name the stored fields, and these are stored beside them.
	Values map[string]json.RawMessage `json:"-"`
}

// maxSessionIDLen bounds session ids; NewSessionID makes 43 characters.
const maxSessionIDLen = 256

// sessionDisplayKey stands for a session's key in errors and logs: a
// session id is a bearer secret.
const sessionDisplayKey = "session:<redacted>"

// NewSessionID returns a new session id: 256 bits from crypto/rand,
// base64url without padding (43 characters, URL-unreserved only).
func NewSessionID() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("redisservice: new session id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// validSessionID reports whether id is 1 to 256 URL-unreserved characters
// (A-Z a-z 0-9 - . _ ~): wider than NewSessionID's own ids (43
// characters), so that the original service's ids pass. Every session
// call refuses anything else with ErrInvalidKey before Redis is asked.
func validSessionID(id string) bool {
	if id == "" || len(id) > maxSessionIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '~':
		default:
			return false
		}
	}
	return true
}

func sessionKey(id string) string       { return "session:" + id }
func userSessionsKey(uid string) string { return "user-sessions:" + uid }

// CreateSession stores data under id with the idle time to live ttl
// (at least one millisecond) and adds id to its user's index, which
// [Service.DestroyUserSessions] and [Service.UserSessions] read. A zero
// CreatedAt or LastActivity is set to now; times are stored with
// millisecond precision. data.Values are stored beside the seven fields,
// each exactly as given. With [Options.SessionMaxLifetime] the session
// also ends at CreatedAt plus that lifetime, however active it is, and
// its index entry is kept until that end. A user with more than
// [Options.MaxSessionsPerUser] live sessions loses the ones whose entries
// end first (at the absolute end, else at the idle expiry); index
// entries of sessions that are gone never count. An invalid id or empty key fails with [ErrInvalidKey]; an empty
// data.UserID, a string field or Values key that is not valid UTF-8, a
// Values key that is a reserved name (the seven fields', "idleTimeoutMs",
// "expiresAtMs") or a Values entry that is not valid JSON with
// [ErrInvalidArgument]; a bad ttl with [ErrInvalidTTL]; nothing is
// written then. It takes two round trips (the session, then the index);
// when the index then holds more than the cap, one more to check which
// of its sessions exist, one to delete those evicted and one to drop
// their entries.
func (s *Service) CreateSession(ctx context.Context, id string, data SessionData, ttl time.Duration) (err error) {
	const op = "createsession"
	ctx, scope := s.tel.begin(ctx, op, sessionDisplayKey)
	defer scope.end(ctx, &err)
	switch {
	case !validSessionID(id):
		return invalid(op, sessionDisplayKey, ErrInvalidKey)
	case data.UserID == "":
		return invalid(op, sessionDisplayKey, fmt.Errorf("%w: empty UserID", ErrInvalidArgument))
	}
	if err := checkTTL(ttl); err != nil {
		return invalid(op, sessionDisplayKey, err)
	}
	p, err := s.prepareSession(op, data, ttl, s.opts.SessionMaxLifetime)
	if err != nil {
		return err
	}
	return s.storeSession(ctx, op, id, p)
}

// preparedSession is a new session, encoded and ready to store.
type preparedSession struct {
	data    SessionData   // as given, CreatedAt and LastActivity filled in
	raw     []byte        // the stored bytes
	life    time.Duration // the key's TTL: the idle timeout, or less when the absolute end is nearer
	indexAt time.Time     // its index entry's expiry
}

// prepareSession checks and encodes a new session (data.UserID and ttl
// already checked) with the absolute lifetime given (0: none), without
// asking Redis. A session with an absolute end is indexed at that end,
// not at its idle expiry: no touch can slide it past its index entry, so
// a touch need not write the index.
func (s *Service) prepareSession(op string, data SessionData, ttl, lifetime time.Duration) (preparedSession, error) {
	now := s.opts.Now()
	if data.CreatedAt.IsZero() {
		data.CreatedAt = now
	}
	if data.LastActivity.IsZero() {
		data.LastActivity = now
	}
	var expiresAtMS int64
	life := ttl
	if lifetime > 0 {
		end := data.CreatedAt.Add(lifetime)
		expiresAtMS = end.UnixMilli()
		if left := end.Sub(now); left < life {
			life = left
		}
		if life < time.Millisecond {
			return preparedSession{}, invalid(op, sessionDisplayKey, fmt.Errorf("%w: CreatedAt is older than the session's lifetime", ErrInvalidArgument))
		}
	}
	b, err := encodeSession(data, ttl.Milliseconds(), expiresAtMS)
	if err != nil {
		return preparedSession{}, invalid(op, sessionDisplayKey, err)
	}
	p := preparedSession{data: data, raw: b, life: life, indexAt: now.Add(life)}
	if expiresAtMS > 0 {
		p.indexAt = time.UnixMilli(expiresAtMS)
	}
	return p, nil
}

// storeSession writes a prepared session under id, then indexes it: two
// round trips (more when the index is over the cap).
func (s *Service) storeSession(ctx context.Context, op, id string, p preparedSession) error {
	if _, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (string, error) {
		return s.rdb.Set(ctx, s.key(sessionKey(id)), p.raw, p.life).Result()
	}); err != nil {
		return err
	}
	return s.indexSession(ctx, op, p.data.UserID, id, p.indexAt)
}

// sessionIndexScript keeps a user's session index: it records sessions'
// expiries (adding a session when it is missing, so that sessions of the
// original service join; an expiry only ever moves later, so that a
// slower writer's earlier expiry cannot make an entry lapse before its
// session), drops sessions that have expired, and makes the index itself
// expire with its last session, so that it never outlives them. It never
// evicts: when the index holds more than the cap it returns every id in
// it, closest to expiring first, for the caller to check which sessions
// still exist; else an empty list. Run again, it does nothing more.
//
// KEYS[1]: the index. ARGV: now (unix ms), cap, then id and expiry (unix
// ms) for each session.
var sessionIndexScript = redis.NewScript(`
for i = 3, #ARGV, 2 do
	redis.call('ZADD', KEYS[1], 'GT', ARGV[i + 1], ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
	redis.call('PEXPIREAT', KEYS[1], last[2])
end
if redis.call('ZCARD', KEYS[1]) > tonumber(ARGV[2]) then
	return redis.call('ZRANGE', KEYS[1], 0, -1)
end
return {}
`)

// indexSession records id's expiry in uid's index, adding id when it is
// missing, and destroys the sessions the cap evicts.
func (s *Service) indexSession(ctx context.Context, op, uid, id string, expiry time.Time) error {
	_, err := s.indexSessions(ctx, op, uid, map[string]time.Time{id: expiry}, s.opts.MaxSessionsPerUser)
	return err
}

// indexSessions records the sessions' expiries, by id, in uid's index in
// one round trip. When the index then holds more than limit ids, it
// checks which of their sessions still exist (one round trip, one per
// node on a cluster), destroys the live ones closest to expiring beyond
// limit (one more) and drops those and the dead ones from the index (one
// more): an id whose session is gone never counts against the cap. It
// returns the evicted ids.
func (s *Service) indexSessions(ctx context.Context, op, uid string, expiries map[string]time.Time, limit int) ([]string, error) {
	args := make([]any, 0, 2+2*len(expiries))
	args = append(args, s.opts.Now().UnixMilli(), limit)
	for id, expiry := range expiries {
		args = append(args, id, expiry.UnixMilli())
	}
	idx := s.key(userSessionsKey(uid))
	ids, err := call(s, ctx, op, "user-sessions:"+uid, func(ctx context.Context) ([]string, error) {
		return sessionIndexScript.Run(ctx, s.rdb, []string{idx}, args...).StringSlice()
	})
	if err != nil || len(ids) <= limit {
		return nil, err
	}
	live, err := s.sessionsExist(ctx, op, ids)
	if err != nil {
		return nil, err
	}
	var evicted []string
	drop := make([]any, 0, len(ids)-limit)
	over := -limit
	for _, ok := range live {
		if ok {
			over++
		}
	}
	for _, id := range ids { // closest to expiring first
		switch {
		case !live[id]:
			drop = append(drop, id)
		case over > 0:
			evicted = append(evicted, id)
			drop = append(drop, id)
			over--
		}
	}
	if len(evicted) > 0 {
		// The sessions go first: an index entry without its session is
		// harmless, a session without its entry escapes log-out-everywhere.
		if _, err := s.delSessions(ctx, op, evicted); err != nil {
			return evicted, err
		}
	}
	if len(drop) > 0 {
		_, err = call(s, ctx, op, "user-sessions:"+uid, func(ctx context.Context) (int64, error) {
			return s.rdb.ZRem(ctx, idx, drop...).Result()
		})
	}
	return evicted, err
}

// sessionsExist reports, by id, whether the sessions ids exist: one
// pipelined round trip, one per node on Redis Cluster.
func (s *Service) sessionsExist(ctx context.Context, op string, ids []string) (map[string]bool, error) {
	cmds := make([]*redis.IntCmd, len(ids))
	_, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (struct{}, error) {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.Exists(ctx, s.key(sessionKey(id)))
			}
			return nil
		})
		return struct{}{}, err
	})
	if err != nil {
		return nil, err
	}
	live := make(map[string]bool, len(ids))
	for i, cmd := range cmds {
		live[ids[i]] = cmd.Val() > 0
	}
	return live, nil
}

// GetSession returns the session stored under id, with every stored field
// beyond the seven in Values, byte for byte. An unknown or expired id is
// the zero SessionData, false, nil; so is a session past its absolute end
// (CreatedAt plus [Options.SessionMaxLifetime] as set now, whenever the
// session was created), which is then deleted (one more round trip). An
// empty id, one over 256 bytes or with a character outside
// A-Z a-z 0-9 - . _ ~ fails with [ErrInvalidKey] without asking Redis. A
// stored value that is not a JSON object with the seven fields' types, or
// whose member names repeat (see the README), is false with [ErrDecode].
//
// It takes one round trip, and makes sure the session is in its user's
// index, which log-out-everywhere reads, at this cost:
//   - Without [Options.LegacySessions], a session written by the original
//     service (without "idleTimeoutMs") takes two more, which add it to
//     the index with its remaining TTL.
//   - With LegacySessions, every session read is added to the index (or
//     its entry moved later) with its remaining TTL, read in the same
//     round trip as the session: one more round trip. This also catches a
//     session the original service refreshed past its index entry.
//
// A session without a TTL is not indexed. Joining the index counts
// against [Options.MaxSessionsPerUser] as CreateSession does. When only
// the indexing fails, it returns the session, true and the error.
func (s *Service) GetSession(ctx context.Context, id string) (_ SessionData, _ bool, err error) {
	const op = "getsession"
	ctx, scope := s.tel.begin(ctx, op, sessionDisplayKey)
	defer scope.end(ctx, &err)
	if !validSessionID(id) {
		return SessionData{}, false, invalid(op, sessionDisplayKey, ErrInvalidKey)
	}
	var raw []byte
	var ttl time.Duration
	var found bool
	if s.opts.LegacySessions {
		raw, ttl, found, err = s.readSessionTTL(ctx, op, id)
	} else {
		raw, found, err = s.readSession(ctx, op, id)
	}
	if !found {
		return SessionData{}, false, err
	}
	doc, data, err := s.decodeSession(ctx, op, raw)
	if err != nil {
		return SessionData{}, false, err
	}
	if s.sessionEnded(&doc, data) {
		_, err := s.delSessions(ctx, op, []string{id})
		return SessionData{}, false, err
	}
	switch {
	case s.opts.LegacySessions:
		if data.UserID != "" && ttl > 0 {
			return data, true, s.indexSession(ctx, op, data.UserID, id, s.opts.Now().Add(ttl))
		}
	case doc.legacy():
		return data, true, s.joinIndex(ctx, op, id, data.UserID)
	}
	return data, true, nil
}

// readSession GETs the stored session id.
func (s *Service) readSession(ctx context.Context, op, id string) ([]byte, bool, error) {
	b, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) ([]byte, error) {
		return s.rdb.Get(ctx, s.key(sessionKey(id))).Bytes()
	})
	return lookup(s, b, err)
}

// decodeSession splits and decodes a stored session; its failure, with
// ErrDecode, is counted and logged.
func (s *Service) decodeSession(ctx context.Context, op string, raw []byte) (sessionDoc, SessionData, error) {
	doc, err := parseSessionDoc(raw)
	var data SessionData
	if err == nil {
		data, err = doc.data()
	}
	if err != nil {
		return sessionDoc{}, SessionData{}, s.fail(ctx, op, sessionDisplayKey, fmt.Errorf("%w: %w", ErrDecode, err))
	}
	return doc, data, nil
}

// sessionEnded reports whether the session has reached its absolute end:
// the stored expiresAtMs, or CreatedAt plus the SessionMaxLifetime set
// now, whichever comes first. The touch script applies the same rule.
func (s *Service) sessionEnded(doc *sessionDoc, data SessionData) bool {
	now := s.opts.Now()
	if end := doc.end(); !end.IsZero() && end.UnixMilli() <= now.UnixMilli() {
		return true
	}
	life := s.opts.SessionMaxLifetime
	return life > 0 && !data.CreatedAt.IsZero() && data.CreatedAt.UnixMilli()+life.Milliseconds() <= now.UnixMilli()
}

// joinIndex adds a session of the original service, which never indexes
// its sessions, to its user's index with its remaining TTL: two round
// trips. A session without a TTL (or without a user) is left out.
func (s *Service) joinIndex(ctx context.Context, op, id, uid string) error {
	if uid == "" {
		return nil
	}
	now := s.opts.Now()
	ttl, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (time.Duration, error) {
		return s.rdb.PTTL(ctx, s.key(sessionKey(id))).Result()
	})
	if err != nil || ttl <= 0 {
		return err
	}
	return s.indexSession(ctx, op, uid, id, now.Add(ttl))
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
	ctx, scope := s.tel.begin(ctx, op, sessionDisplayKey)
	defer scope.end(ctx, &err)
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
	if rawUID == "" || decodeString([]byte(rawUID), &uid) != nil || uid == "" || ttl <= 0 {
		return true, nil // no index entry to move: no user, or an old session without TTL
	}
	return true, s.indexSession(ctx, op, uid, id, now.Add(time.Duration(ttl)*time.Millisecond))
}

// DestroySession deletes the session, drops it from its user's index
// and reports whether it existed: two round trips (one when it did not
// exist). A lost reply that go-redis sends again does not change the
// answer.
func (s *Service) DestroySession(ctx context.Context, id string) (_ bool, err error) {
	const op = "destroysession"
	ctx, scope := s.tel.begin(ctx, op, sessionDisplayKey)
	defer scope.end(ctx, &err)
	if !validSessionID(id) {
		return false, invalid(op, sessionDisplayKey, ErrInvalidKey)
	}
	status, _, raw, err := s.runCAS(ctx, op, id, nil, "destroy", nil)
	if err != nil || status != casDone {
		return false, err
	}
	// raw is empty when a lost reply hid it: the entry is dropped when the
	// index is next read or outgrows the cap.
	uid := ""
	if doc, err := parseSessionDoc(raw); err == nil {
		uid = doc.userID()
	}
	if uid == "" {
		return true, nil
	}
	_, err = call(s, ctx, op, "user-sessions:"+uid, func(ctx context.Context) (int64, error) {
		return s.rdb.ZRem(ctx, s.key(userSessionsKey(uid)), id).Result()
	})
	return true, err
}

// DestroyUserSessions deletes every session of userID (log out
// everywhere) and returns how many existed. It reads the user's index,
// not the keyspace: one round trip for the index, then, when it names any
// session, one for the deletes (one per node on Redis Cluster) and one to
// empty the index: one or three round trips. When some session was gone
// already (expired, destroyed, or renewed meanwhile), it reads the index
// again (one more) and destroys the ids added since (two more), so that
// a session renewed by [Service.RenewSessionID] while it runs is
// destroyed under its new id; a session created meanwhile may be too.
// With [Options.LegacySessions] it also walks session:* to find the
// user's sessions that are missing from the index or whose index entry
// has lapsed (written or refreshed by the original service); see there
// for the cost. When the walk fails part-way, the sessions found until
// then are destroyed all the same and the error returned with the count.
func (s *Service) DestroyUserSessions(ctx context.Context, userID string) (_ int64, err error) {
	const op = "destroyusersessions"
	ctx, scope := s.tel.begin(ctx, op, "user-sessions:"+userID)
	defer scope.end(ctx, &err)
	if userID == "" {
		return 0, invalid(op, userID, ErrInvalidKey)
	}
	idx := s.key(userSessionsKey(userID))
	readIndex := func() ([]string, error) {
		return call(s, ctx, op, "user-sessions:"+userID, func(ctx context.Context) ([]string, error) {
			return s.rdb.ZRange(ctx, idx, 0, -1).Result()
		})
	}
	ids, err := readIndex()
	if err != nil {
		return 0, err
	}
	all := ids
	var walkErr error // the sessions found before a failed walk are destroyed all the same
	if s.opts.LegacySessions {
		var found map[string][]byte
		found, walkErr = s.scanUserSessions(ctx, op, userID)
		all = slices.Clone(ids)
		for id := range found {
			if !slices.Contains(ids, id) {
				all = append(all, id)
			}
		}
	}
	if len(all) == 0 {
		return 0, walkErr
	}
	n, err := s.delSessions(ctx, op, all)
	if err != nil {
		return n, errors.Join(walkErr, err)
	}
	// A session that was gone may have been renewed: RenewSessionID indexes
	// the new id before it deletes the old, so the new id is in the index
	// by now. A few passes, each needing another renewal to be outrun.
	done := make(map[string]bool, len(all))
	for _, id := range all {
		done[id] = true
	}
	missing := int64(len(all)) - n
	for pass := 0; missing > 0 && pass < 4; pass++ {
		again, err := readIndex()
		if err != nil {
			return n, errors.Join(walkErr, err)
		}
		var fresh []string
		for _, id := range again {
			if !done[id] {
				done[id] = true
				fresh = append(fresh, id)
			}
		}
		if len(fresh) == 0 {
			break
		}
		m, err := s.delSessions(ctx, op, fresh)
		n += m
		if err != nil {
			return n, errors.Join(walkErr, err)
		}
		ids = append(ids, fresh...)
		missing = int64(len(fresh)) - m
	}
	if len(ids) == 0 {
		return n, walkErr
	}
	members := make([]any, len(ids))
	for i, id := range ids {
		members[i] = id
	}
	// Only the ids read above: an id added meanwhile keeps its entry.
	_, err = call(s, ctx, op, "user-sessions:"+userID, func(ctx context.Context) (int64, error) {
		return s.rdb.ZRem(ctx, idx, members...).Result()
	})
	return n, errors.Join(walkErr, err)
}

// delSessions deletes the sessions ids with deleteKeys (one round trip,
// one per node on Redis Cluster) and returns how many existed; errors and
// logs name them sessionDisplayKey.
func (s *Service) delSessions(ctx context.Context, op string, ids []string) (int64, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.key(sessionKey(id))
	}
	return call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (int64, error) {
		return s.deleteKeys(ctx, false, keys)
	})
}
