package redisservice

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// sessionScanCount is the COUNT hint of each SCAN step of the walk over
// session:* under Options.LegacySessions.
const sessionScanCount = 500

// UserSessions returns the user's live sessions by id (expired, ended and destroyed ones never).
//
// It reads the user's index (one round trip) and then the sessions it
// names (one pipelined round trip, one per node on Redis Cluster); index
// entries whose session has expired or been destroyed are dropped from
// the index (one more round trip, when there are any): one to three round
// trips. A session past its absolute end (see [Service.GetSession]) is
// deleted too (one more). With [Options.LegacySessions] it also walks session:* for the
// user's sessions that the index lacks (see there for the cost), then
// reads the remaining TTL of every session it returns (one pipelined
// round trip) and puts them all in the index with it (one more, and one
// to destroy the sessions that the cap evicts, see
// [Service.CreateSession]; those are left out of the result), so that the
// index names them once LegacySessions is turned off. A session that does
// not decode is left out and reported with an error matching [ErrDecode],
// beside the others; so is a failure of the indexing. An empty userID
// fails with [ErrInvalidKey].
func (s *Service) UserSessions(ctx context.Context, userID string) (_ map[string]SessionData, err error) {
	const op = "usersessions"
	ctx, scope := s.tel.Begin(ctx, op, userSessionsKey(userID))
	defer scope.End(ctx, &err)
	if userID == "" {
		return map[string]SessionData{}, invalid(op, userID, ErrInvalidKey)
	}
	ids, err := s.readIndex(ctx, op, userID)
	if err != nil {
		return map[string]SessionData{}, err
	}
	raws, err := s.readSessions(ctx, op, ids)
	if err != nil {
		return map[string]SessionData{}, err
	}
	if s.opts.LegacySessions {
		found, err := s.scanUserSessions(ctx, op, userID)
		if err != nil {
			return map[string]SessionData{}, err
		}
		for id, raw := range found {
			raws[id] = raw
		}
	}
	out := make(map[string]SessionData, len(raws))
	var errs error
	var ended []string
	for id, raw := range raws {
		doc, err := parseSessionDoc(raw)
		var data SessionData
		if err == nil {
			data, err = doc.data()
		}
		switch {
		case err != nil:
			errs = errors.Join(errs, err)
		case s.sessionEnded(&doc, data):
			ended = append(ended, id)
		case data.UserID == userID:
			out[id] = data
		}
	}
	// Index entries of sessions that are gone or have ended go.
	var stale []string
	for _, id := range ids {
		if _, ok := raws[id]; !ok {
			stale = append(stale, id)
		}
	}
	if len(ended) > 0 {
		if _, err := s.delSessions(ctx, op, ended); err != nil {
			return map[string]SessionData{}, err
		}
		stale = append(stale, ended...)
	}
	if len(stale) > 0 {
		if err := s.unindexSessions(ctx, op, userID, stale); err != nil {
			return map[string]SessionData{}, err
		}
	}
	if errs != nil {
		errs = s.fail(ctx, op, userSessionsKey(userID), errors.Join(ErrDecode, errs))
	}
	if s.opts.LegacySessions && len(out) > 0 {
		evicted, err := s.indexAll(ctx, op, userID, slices.Collect(maps.Keys(out)))
		for _, id := range evicted {
			delete(out, id)
		}
		errs = errors.Join(errs, err)
	}
	return out, errs
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
	ctx, scope := s.tel.Begin(ctx, op, userSessionsKey(userID))
	defer scope.End(ctx, &err)
	if userID == "" {
		return 0, invalid(op, userID, ErrInvalidKey)
	}
	ids, err := s.readIndex(ctx, op, userID)
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
	renewed, m, err := s.destroyRenewed(ctx, op, userID, all, int64(len(all))-n)
	n += m
	if err != nil {
		return n, errors.Join(walkErr, err)
	}
	ids = append(ids, renewed...)
	if len(ids) == 0 {
		return n, walkErr
	}
	// Only the ids read above: an id added meanwhile keeps its entry.
	return n, errors.Join(walkErr, s.unindexSessions(ctx, op, userID, ids))
}

// destroyRenewed destroys the sessions that uid's index names beyond
// done, the ids DestroyUserSessions destroyed, missing of which were gone
// already. A session that was gone may have been renewed: RenewSessionID
// indexes the new id before it deletes the old, so the new id is in the
// index by now. A few passes, each needing another renewal to be outrun.
// It returns the ids it destroyed and how many of them existed.
func (s *Service) destroyRenewed(ctx context.Context, op, uid string, done []string, missing int64) ([]string, int64, error) {
	seen := make(map[string]bool, len(done))
	for _, id := range done {
		seen[id] = true
	}
	var renewed []string
	var n int64
	for pass := 0; missing > 0 && pass < 4; pass++ {
		again, err := s.readIndex(ctx, op, uid)
		if err != nil {
			return renewed, n, err
		}
		var fresh []string
		for _, id := range again {
			if !seen[id] {
				seen[id] = true
				fresh = append(fresh, id)
			}
		}
		if len(fresh) == 0 {
			break
		}
		m, err := s.delSessions(ctx, op, fresh)
		n += m
		if err != nil {
			return renewed, n, err
		}
		renewed = append(renewed, fresh...)
		missing = int64(len(fresh)) - m
	}
	return renewed, n, nil
}

// readIndex returns the ids in uid's index, closest to expiring first.
func (s *Service) readIndex(ctx context.Context, op, uid string) ([]string, error) {
	return call(s, ctx, op, userSessionsKey(uid), func(ctx context.Context) ([]string, error) {
		return s.rdb.ZRange(ctx, s.key(userSessionsKey(uid)), 0, -1).Result()
	})
}

// unindexSessions drops the ids from uid's index: one round trip.
func (s *Service) unindexSessions(ctx context.Context, op, uid string, ids []string) error {
	members := make([]any, len(ids))
	for i, id := range ids {
		members[i] = id
	}
	_, err := call(s, ctx, op, userSessionsKey(uid), func(ctx context.Context) (int64, error) {
		return s.rdb.ZRem(ctx, s.key(userSessionsKey(uid)), members...).Result()
	})
	return err
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
	ids, err := call(s, ctx, op, userSessionsKey(uid), func(ctx context.Context) ([]string, error) {
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
	drop := make([]string, 0, len(ids)-limit)
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
		err = s.unindexSessions(ctx, op, uid, drop)
	}
	return evicted, err
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

// indexAll puts the sessions ids of uid in uid's index with their
// remaining TTLs (sessions without one are left out): one pipelined round
// trip for the TTLs, one for the index. It returns the ids the cap
// evicted.
func (s *Service) indexAll(ctx context.Context, op, uid string, ids []string) ([]string, error) {
	cmds, err := pipelineSessions(ctx, s, op, ids, func(ctx context.Context, p redis.Pipeliner, key string) *redis.DurationCmd {
		return p.PTTL(ctx, key)
	})
	if err != nil {
		return nil, err
	}
	now := s.opts.Now()
	expiries := make(map[string]time.Time, len(ids))
	for i, cmd := range cmds {
		if ttl := cmd.Val(); ttl > 0 { // -1: no TTL, -2: gone meanwhile
			expiries[ids[i]] = now.Add(ttl)
		}
	}
	if len(expiries) == 0 {
		return nil, nil
	}
	return s.indexSessions(ctx, op, uid, expiries, s.opts.MaxSessionsPerUser)
}

// scanUserSessions walks session:* on every master (scanEach, SCAN COUNT
// 500) and returns the stored bytes, by id, of the sessions whose
// top-level userId is uid. Each step's keys are read in one pipelined
// round trip. On error it returns what it found until then.
func (s *Service) scanUserSessions(ctx context.Context, op, uid string) (map[string][]byte, error) {
	prefix := s.key(sessionPrefix)
	match := EscapePattern(prefix) + "*"
	// A cheap test before decoding: the stored userId holds uid's text
	// unless it needed escaping.
	plain := !strings.ContainsAny(uid, "\"\\/") && !strings.ContainsFunc(uid, func(r rune) bool { return r < 0x20 || r > 0x7e })
	var mu sync.Mutex // guards found
	found := map[string][]byte{}
	err := s.scanEach(ctx, op, sessionKey("*"), match, sessionScanCount, func(ctx context.Context, node redis.UniversalClient, keys []string) error {
		raws := make(map[string][]byte, len(keys))
		_, err := call(s, ctx, op, sessionKey("*"), func(ctx context.Context) (struct{}, error) {
			return struct{}{}, s.getEach(ctx, node, keys, func(k string) string { return k }, raws)
		})
		mu.Lock()
		defer mu.Unlock()
		for k, raw := range raws {
			if plain && !bytes.Contains(raw, []byte(uid)) {
				continue
			}
			if doc, err := parseSessionDoc(raw); err == nil && doc.userID() == uid {
				found[strings.TrimPrefix(k, prefix)] = raw
			}
		}
		return err
	})
	return found, err
}
