package redisservice

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// SessionData is what a session holds. It is stored as JSON at
// "session:<id>" with the field names of the original TypeScript
// service, so that both can read sessions the other wrote.
type SessionData struct {
	UserID       string    `json:"userId"`
	Email        string    `json:"email"`
	Role         string    `json:"role"`
	CreatedAt    time.Time `json:"createdAt"`
	LastActivity time.Time `json:"lastActivity"`
	IP           string    `json:"ip"`
	UserAgent    string    `json:"userAgent"`
}

// storedSession is SessionData as stored, with what the sliding and
// absolute expiry need. Sessions written by the original service lack
// both extra fields.
type storedSession struct {
	SessionData
	IdleTimeoutMS int64 `json:"idleTimeoutMs,omitempty"` // the idle TTL the session was created with
	ExpiresAtMS   int64 `json:"expiresAtMs,omitempty"`   // absolute end (unix ms) under SessionMaxLifetime
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
// (A-Z a-z 0-9 - . _ ~). Anything else cannot have come from NewSessionID
// or the original service: every session call refuses it with
// ErrInvalidKey before Redis is asked.
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
// [Service.DestroyUserSessions] reads. A zero CreatedAt or LastActivity
// is set to now. With [Options.SessionMaxLifetime] the session also ends
// at CreatedAt plus that lifetime, however active it is. A user with more
// than [Options.MaxSessionsPerUser] live sessions loses the ones closest
// to expiring. An invalid id or empty key fails with [ErrInvalidKey], an
// empty data.UserID with [ErrInvalidArgument], a bad ttl with
// [ErrInvalidTTL]; nothing is written then. It takes two round trips.
func (s *Service) CreateSession(ctx context.Context, id string, data SessionData, ttl time.Duration) error {
	const op = "createsession"
	switch {
	case !validSessionID(id):
		return invalid(op, sessionDisplayKey, ErrInvalidKey)
	case data.UserID == "":
		return invalid(op, sessionDisplayKey, fmt.Errorf("%w: empty UserID", ErrInvalidArgument))
	}
	if err := checkTTL(ttl); err != nil {
		return invalid(op, sessionDisplayKey, err)
	}
	now := s.opts.Now()
	if data.CreatedAt.IsZero() {
		data.CreatedAt = now
	}
	if data.LastActivity.IsZero() {
		data.LastActivity = now
	}
	st := storedSession{SessionData: data, IdleTimeoutMS: ttl.Milliseconds()}
	life := ttl
	if max := s.opts.SessionMaxLifetime; max > 0 {
		end := data.CreatedAt.Add(max)
		st.ExpiresAtMS = end.UnixMilli()
		if left := end.Sub(now); left < life {
			life = left
		}
		if life < time.Millisecond {
			return invalid(op, sessionDisplayKey, fmt.Errorf("%w: CreatedAt is older than SessionMaxLifetime", ErrInvalidArgument))
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		return invalid(op, sessionDisplayKey, fmt.Errorf("%w: %w", ErrInvalidArgument, err))
	}
	if _, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (string, error) {
		return s.rdb.Set(ctx, s.key(sessionKey(id)), b, life).Result()
	}); err != nil {
		return err
	}
	return s.indexSession(ctx, op, data.UserID, id, now.Add(life), true)
}

// sessionIndexScript keeps a user's session index: it records a
// session's expiry (adding it, or with ARGV[5] = "XX" only updating it),
// drops sessions that have expired, evicts those closest to expiring
// beyond the cap and returns their ids, and makes the index itself expire
// with its last session, so that it never outlives them.
//
// KEYS[1]: the index. ARGV: id, expiry (unix ms), now (unix ms), cap, mode.
var sessionIndexScript = redis.NewScript(`
if ARGV[5] == 'XX' then
	redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
else
	redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local evicted = {}
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
	local popped = redis.call('ZRANGE', KEYS[1], 0, over - 1)
	redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
	evicted = popped
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
	redis.call('PEXPIREAT', KEYS[1], last[2])
end
return evicted
`)

// indexSession records id's expiry in uid's index and destroys the
// sessions the cap evicts.
func (s *Service) indexSession(ctx context.Context, op, uid, id string, expiry time.Time, add bool) error {
	mode := "XX"
	if add {
		mode = "ADD"
	}
	idx := s.key(userSessionsKey(uid))
	evicted, err := call(s, ctx, op, "user-sessions:"+uid, func(ctx context.Context) ([]string, error) {
		return sessionIndexScript.Run(ctx, s.rdb, []string{idx}, id, expiry.UnixMilli(), s.opts.Now().UnixMilli(), s.opts.MaxSessionsPerUser, mode).StringSlice()
	})
	if err != nil || len(evicted) == 0 {
		return err
	}
	_, err = s.delSessions(ctx, op, evicted)
	return err
}

// GetSession returns the session stored under id. An unknown or expired
// id is the zero SessionData, false, nil. An id that [NewSessionID] could
// not have made is refused with [ErrInvalidKey] without asking Redis. A
// stored value that does not decode is false with an error matching
// [ErrDecode].
func (s *Service) GetSession(ctx context.Context, id string) (SessionData, bool, error) {
	const op = "getsession"
	if !validSessionID(id) {
		return SessionData{}, false, invalid(op, sessionDisplayKey, ErrInvalidKey)
	}
	b, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) ([]byte, error) {
		return s.rdb.Get(ctx, s.key(sessionKey(id))).Bytes()
	})
	b, found, err := lookup(s, b, err)
	if !found {
		return SessionData{}, false, err
	}
	var st storedSession
	if err := json.Unmarshal(b, &st); err != nil {
		return SessionData{}, false, s.fail(ctx, op, sessionDisplayKey, fmt.Errorf("%w: %w", ErrDecode, err))
	}
	return st.SessionData, true, nil
}

// sessionTouchScript slides one session's expiry, atomically on its
// single key: it sets lastActivity and gives the key its own idle TTL
// again, no later than its absolute end. A missing key stays missing: a
// session destroyed or expired a moment earlier is never brought back.
// A session of the original service, without idleTimeoutMs, keeps its
// remaining TTL (or none). It returns 0 for a missing or ended session,
// else {1, userId, new PTTL or -1}.
//
// KEYS[1]: the session. ARGV: lastActivity (RFC 3339), now (unix ms).
var sessionTouchScript = redis.NewScript(`
local raw = redis.call('GET', KEYS[1])
if not raw then
	return 0
end
local ok, s = pcall(cjson.decode, raw)
if not ok or type(s) ~= 'table' then
	return redis.error_reply('ERR stored session does not decode')
end
s['lastActivity'] = ARGV[1]
local ttl = tonumber(s['idleTimeoutMs']) or 0
if ttl <= 0 then
	ttl = redis.call('PTTL', KEYS[1])
end
local ends = tonumber(s['expiresAtMs']) or 0
if ends > 0 then
	local left = ends - tonumber(ARGV[2])
	if left <= 0 then
		redis.call('DEL', KEYS[1])
		return 0
	end
	if ttl < 0 or left < ttl then
		ttl = left
	end
end
if ttl > 0 then
	redis.call('SET', KEYS[1], cjson.encode(s), 'PX', ttl)
else
	redis.call('SET', KEYS[1], cjson.encode(s), 'KEEPTTL')
end
return {1, tostring(s['userId'] or ''), ttl}
`)

// UpdateSessionActivity sets the session's LastActivity to now and
// slides its expiry: the session lives for its own idle TTL (the ttl it
// was created with) from now, never past CreatedAt plus
// [Options.SessionMaxLifetime]. It reports whether the session exists.
// It is one atomic script on the session's key, so a session destroyed
// or expired a moment earlier is never resurrected and concurrent
// updates lose nothing; a second round trip then moves the session's
// expiry in its user's index. When only that second step fails it
// returns true with the error. The stored JSON is re-encoded by Redis's
// cjson: the same fields, in another order, with "/" escaped.
func (s *Service) UpdateSessionActivity(ctx context.Context, id string) (bool, error) {
	const op = "updatesession"
	if !validSessionID(id) {
		return false, invalid(op, sessionDisplayKey, ErrInvalidKey)
	}
	now := s.opts.Now()
	stamp, err := now.UTC().MarshalText()
	if err != nil {
		return false, invalid(op, sessionDisplayKey, fmt.Errorf("%w: %w", ErrInvalidArgument, err))
	}
	reply, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (any, error) {
		return sessionTouchScript.Run(ctx, s.rdb, []string{s.key(sessionKey(id))}, string(stamp), now.UnixMilli()).Result()
	})
	if err != nil {
		return false, err
	}
	r, ok := reply.([]any)
	if !ok || len(r) != 3 {
		return false, nil // 0: no such session
	}
	uid, _ := r[1].(string)
	ttl, _ := r[2].(int64)
	if uid == "" || ttl <= 0 {
		return true, nil // no index entry to move: old session without TTL
	}
	return true, s.indexSession(ctx, op, uid, id, now.Add(time.Duration(ttl)*time.Millisecond), false)
}

// DestroySession deletes the session and reports whether it existed. Its
// entry in the user's index is dropped when that index is next written.
func (s *Service) DestroySession(ctx context.Context, id string) (bool, error) {
	const op = "destroysession"
	if !validSessionID(id) {
		return false, invalid(op, sessionDisplayKey, ErrInvalidKey)
	}
	n, err := s.delSessions(ctx, op, []string{id})
	return n > 0, err
}

// DestroyUserSessions deletes every session of userID (log out
// everywhere) and returns how many existed. It reads the user's index,
// not the keyspace: one round trip for the index, one for the deletes
// (one per node on Redis Cluster). Sessions created while it runs
// survive it.
func (s *Service) DestroyUserSessions(ctx context.Context, userID string) (int64, error) {
	const op = "destroyusersessions"
	if userID == "" {
		return 0, invalid(op, userID, ErrInvalidKey)
	}
	idx := s.key(userSessionsKey(userID))
	ids, err := call(s, ctx, op, "user-sessions:"+userID, func(ctx context.Context) ([]string, error) {
		return s.rdb.ZRange(ctx, idx, 0, -1).Result()
	})
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	n, err := s.delSessions(ctx, op, ids)
	if err != nil {
		return n, err
	}
	members := make([]any, len(ids))
	for i, id := range ids {
		members[i] = id
	}
	// Only the ids read above: an id added meanwhile keeps its entry.
	_, err = call(s, ctx, op, "user-sessions:"+userID, func(ctx context.Context) (int64, error) {
		return s.rdb.ZRem(ctx, idx, members...).Result()
	})
	return n, err
}

// delSessions deletes the sessions ids, pipelined one DEL each (they lie
// in different slots of a cluster), and returns how many existed.
func (s *Service) delSessions(ctx context.Context, op string, ids []string) (int64, error) {
	return call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (int64, error) {
		if len(ids) == 1 {
			return s.rdb.Del(ctx, s.key(sessionKey(ids[0]))).Result()
		}
		cmds, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, id := range ids {
				p.Del(ctx, s.key(sessionKey(id)))
			}
			return nil
		})
		var n int64
		for _, c := range cmds {
			n += c.(*redis.IntCmd).Val()
		}
		return n, err
	})
}
