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
	ctx, scope := s.tel.begin(ctx, op, userSessionsKey(userID))
	defer scope.end(ctx, &err)
	if userID == "" {
		return map[string]SessionData{}, invalid(op, userID, ErrInvalidKey)
	}
	idx := s.key(userSessionsKey(userID))
	ids, err := call(s, ctx, op, userSessionsKey(userID), func(ctx context.Context) ([]string, error) {
		return s.rdb.ZRange(ctx, idx, 0, -1).Result()
	})
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
	var stale []any
	for _, id := range ids {
		if _, ok := raws[id]; !ok {
			stale = append(stale, id)
		}
	}
	if len(ended) > 0 {
		if _, err := s.delSessions(ctx, op, ended); err != nil {
			return map[string]SessionData{}, err
		}
		for _, id := range ended {
			stale = append(stale, id)
		}
	}
	if len(stale) > 0 {
		if _, err := call(s, ctx, op, userSessionsKey(userID), func(ctx context.Context) (int64, error) {
			return s.rdb.ZRem(ctx, idx, stale...).Result()
		}); err != nil {
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

// indexAll puts the sessions ids of uid in uid's index with their
// remaining TTLs (sessions without one are left out): one pipelined round
// trip for the TTLs, one for the index. It returns the ids the cap
// evicted.
func (s *Service) indexAll(ctx context.Context, op, uid string, ids []string) ([]string, error) {
	cmds := make([]*redis.DurationCmd, len(ids))
	_, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (struct{}, error) {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.PTTL(ctx, s.key(sessionKey(id)))
			}
			return nil
		})
		return struct{}{}, err
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

// readSessions GETs the sessions ids, pipelined, and returns those that
// exist by id.
func (s *Service) readSessions(ctx context.Context, op string, ids []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	_, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, s.getEach(ctx, s.rdb, ids, func(id string) string { return s.key(sessionKey(id)) }, out)
	})
	return out, err
}

// getEach GETs the keys named by ids through c, pipelined, into out by
// id. Missing keys, and keys that are not strings, are left out.
func (s *Service) getEach(ctx context.Context, c redis.UniversalClient, ids []string, key func(string) string, out map[string][]byte) error {
	cmds := make([]*redis.StringCmd, len(ids))
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.Get(ctx, key(id))
		}
		return nil
	})
	for i, cmd := range cmds {
		b, cerr := cmd.Bytes()
		var rerr redis.Error
		switch {
		case cerr == nil:
			out[ids[i]] = b
		case cerr == redis.Nil || errors.As(cerr, &rerr): //nolint:errorlint // redis.Nil comes unwrapped
		default:
			return cerr
		}
	}
	var rerr redis.Error
	if err == redis.Nil || errors.As(err, &rerr) { //nolint:errorlint // redis.Nil comes unwrapped
		return nil // a missing or WRONGTYPE key, left out above
	}
	return err
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
