package redisservice

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"
)

// sessionAttempts bounds the read-check-write attempts of UpdateSession
// and RenewSessionID.
const sessionAttempts = 32

// UpdateSession applies fn to the stored session and writes the result back atomically: a
// concurrent update or destroy is never lost or undone (optimistic check-and-set, retried a
// bounded number of times), and a missing session is never brought back (false, nil).
// Fields fn does not change keep their stored bytes. fn's error aborts with nothing written.
//
// Each attempt reads the session (one round trip), calls fn on a copy, and
// writes only if the stored bytes are still those it read (a script, one
// round trip); otherwise it pauses up to a few milliseconds at random and
// tries again, at most 32 times, calling fn anew each time: fn must have
// no other effects. A concurrent [Service.UpdateSessionActivity] alone is
// not a conflict: the write goes ahead and keeps its lastActivity (unless
// fn changed LastActivity itself). When every attempt found the session
// changed otherwise, it fails with [ErrConflict]. The whole call is
// bounded by ctx's deadline, or [Options.Timeout].
//
// Only what fn changed is written anew: a seven-field value that differs
// (times as toISOString, milliseconds), and Values entries fn added,
// changed or deleted; every other member keeps its bytes and its place,
// new ones go at the end. The session keeps its remaining TTL and absolute
// end; LastActivity changes only if fn changes it. A UserID changed by fn
// fails with [ErrInvalidArgument]: a session never moves to another user
// (create a new session for the new user instead). A Values key that is a
// reserved name or a value that is not valid JSON fails with
// [ErrInvalidArgument] too, and so does a nil fn. When fn changes
// nothing, nothing is written. It reports whether the session exists.
// After a write, a session of the original service also joins its user's
// index with its remaining TTL (one more round trip; more when the cap
// evicts, see [Service.CreateSession]); with [Options.LegacySessions]
// every session written does, as [Service.GetSession] says.
func (s *Service) UpdateSession(ctx context.Context, id string, fn func(*SessionData) error) (_ bool, err error) {
	const op = "updatesession"
	ctx, scope := s.tel.begin(ctx, op, sessionDisplayKey)
	defer scope.end(ctx, &err)
	switch {
	case !validSessionID(id):
		return false, invalid(op, sessionDisplayKey, ErrInvalidKey)
	case fn == nil:
		return false, invalid(op, sessionDisplayKey, fmt.Errorf("%w: nil fn", ErrInvalidArgument))
	}
	ctx, done, err := s.begin(ctx)
	if err != nil {
		return false, s.fail(ctx, op, sessionDisplayKey, err)
	}
	defer done()
	for attempt := range sessionAttempts {
		if err := s.pauseBeforeRetry(ctx, op, attempt); err != nil {
			return false, err
		}
		raw, found, err := s.readSession(ctx, op, id)
		if !found {
			return false, err
		}
		doc, old, err := s.decodeSession(ctx, op, raw)
		if err != nil {
			return false, err
		}
		data := old
		data.Values = cloneValues(old.Values)
		if err := fn(&data); err != nil {
			return false, invalid(op, sessionDisplayKey, err) // nothing written
		}
		if data.UserID != old.UserID {
			return false, invalid(op, sessionDisplayKey, fmt.Errorf("%w: UserID cannot change", ErrInvalidArgument))
		}
		b, changed, err := doc.apply(old, data)
		switch {
		case err != nil:
			return false, invalid(op, sessionDisplayKey, err)
		case !changed:
			return true, nil
		}
		status, ttl, err := s.compareAndSet(ctx, op, id, raw, b)
		switch {
		case err != nil || status == casMissing:
			return false, err
		case status == casChanged:
			continue
		}
		if (doc.legacy() || s.opts.LegacySessions) && old.UserID != "" && ttl > 0 {
			return true, s.indexSession(ctx, op, old.UserID, id, s.opts.Now().Add(ttl))
		}
		return true, nil
	}
	return false, invalid(op, sessionDisplayKey, ErrConflict) // nothing written
}

// RenewSessionID moves a session to a new id from NewSessionID (against session fixation):
// same data and Values, same remaining idle time and absolute end, the old id unreadable once
// it returns, the user's index updated. A missing session is ("", false, nil).
//
// The steps, one round trip each (five; six when adding the new id to
// the index evicts another session beyond [Options.MaxSessionsPerUser],
// against which the old and the new id count once), per attempt: read
// the session and its remaining TTL;
// write the same bytes under the new id with that TTL (so it ends within
// a round trip of when the old one would have); add the new id to the
// user's index; delete the old id, only if its bytes are still those read
// (a script); drop the old id from the index. The two keys lie in
// different slots of a cluster, so this cannot be one atomic step; the
// order means a crash or failure part-way leaves both ids alive for a
// moment (the old one until its TTL ends), never neither. When the old
// session changed meanwhile (an update, UpdateSessionActivity), the new
// key is deleted and it starts again, at most 32 times, then fails with
// [ErrConflict]; when it was destroyed meanwhile, the new key is deleted
// too and the result is ("", false, nil). The new key is deleted only
// then, or when adding it to the index fails (the old id is untouched
// then, and the result is "", false and the error).
//
// When the delete of the old id fails, it may have run all the same (a
// timeout, say), so the new key is kept: the result is the new id, true
// and the error. The new session is alive and indexed; the old one may be
// too. Use the new id, and finish the renewal with
// [Service.DestroySession] of the old id (a change made to the old
// session in between is not carried over). When only the last step
// fails, the result is the new id, true and the error too; the old id is
// gone then, and its index entry is dropped when the index is next
// written.
func (s *Service) RenewSessionID(ctx context.Context, id string) (_ string, _ bool, err error) {
	const op = "renewsessionid"
	ctx, scope := s.tel.begin(ctx, op, sessionDisplayKey)
	defer scope.end(ctx, &err)
	if !validSessionID(id) {
		return "", false, invalid(op, sessionDisplayKey, ErrInvalidKey)
	}
	ctx, done, err := s.begin(ctx)
	if err != nil {
		return "", false, s.fail(ctx, op, sessionDisplayKey, err)
	}
	defer done()
	for attempt := range sessionAttempts {
		if err := s.pauseBeforeRetry(ctx, op, attempt); err != nil {
			return "", false, err
		}
		raw, ttl, found, err := s.readSessionTTL(ctx, op, id)
		if !found {
			return "", false, err
		}
		newID, err := NewSessionID()
		if err != nil {
			return "", false, invalid(op, sessionDisplayKey, err)
		}
		uid := ""
		if doc, err := parseSessionDoc(raw); err == nil {
			uid = doc.userID()
		}
		// 1: the new key.
		created, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (bool, error) {
			return s.rdb.SetNX(ctx, s.key(sessionKey(newID)), raw, ttl).Result() // ttl 0: none
		})
		switch {
		case err != nil:
			return "", false, err
		case !created:
			continue // the new id was taken (never seen with 256 random bits)
		}
		// 2: the index. Without it log-out-everywhere would miss the new id.
		// Until step 4 the old id is there too: they count once against
		// the cap, lest the one session evict itself.
		if uid != "" && ttl > 0 {
			expiry := map[string]time.Time{newID: s.opts.Now().Add(ttl)}
			if _, err := s.indexSessions(ctx, op, uid, expiry, s.opts.MaxSessionsPerUser+1); err != nil {
				_, _ = s.delSessions(ctx, op, []string{newID})
				return "", false, err
			}
		}
		// 3: the old key, if nobody changed or destroyed it meanwhile.
		status, _, err := s.compareAndDelete(ctx, op, id, raw)
		switch {
		case err != nil:
			// The delete may have run (a reply lost to a timeout): the
			// new key is all that is sure to hold the session, so keep it.
			return newID, true, err
		case status != casDone:
			_, _ = s.delSessions(ctx, op, []string{newID})
			if status == casMissing {
				return "", false, nil
			}
			continue
		}
		// 4: the old id's index entry.
		if uid != "" {
			_, err = call(s, ctx, op, "user-sessions:"+uid, func(ctx context.Context) (int64, error) {
				return s.rdb.ZRem(ctx, s.key(userSessionsKey(uid)), id).Result()
			})
		}
		return newID, true, err
	}
	return "", false, invalid(op, sessionDisplayKey, ErrConflict) // the old session is as others left it
}

// readSessionTTL reads a session and its remaining TTL (-1: none) in one
// pipelined round trip; both commands address one key, so one node.
func (s *Service) readSessionTTL(ctx context.Context, op, id string) ([]byte, time.Duration, bool, error) {
	key := s.key(sessionKey(id))
	var get *redis.StringCmd
	var pttl *redis.DurationCmd
	_, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (struct{}, error) {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			get = p.Get(ctx, key)
			pttl = p.PTTL(ctx, key)
			return nil
		})
		return struct{}{}, err
	})
	if err != nil && err != redis.Nil { //nolint:errorlint // call returns redis.Nil unwrapped
		return nil, 0, false, err
	}
	raw, err := get.Bytes()
	raw, found, err := lookup(s, raw, err)
	switch ttl := pttl.Val(); {
	case !found:
		return nil, 0, false, err
	case ttl == -1: // go-redis's value for "no TTL"
		return raw, 0, true, nil
	case ttl <= 0: // expired between the two commands
		return nil, 0, false, nil
	default:
		return raw, ttl, true, nil
	}
}

// Outcomes of sessionCASScript.
const (
	casMissing = 0  // no such session
	casChanged = -1 // the session's bytes are not those expected
	casDone    = 1
)

// sessionCASScript writes (ARGV[2] 'set': ARGV[3], keeping the TTL) or
// deletes (ARGV[2] 'del') a session, only if its stored bytes are still
// ARGV[1]. A write also goes ahead when the stored bytes differ from
// ARGV[1] only in the top-level lastActivity value, in the layout both
// services write (userId, email, role, createdAt, lastActivity first):
// that is a concurrent UpdateSessionActivity, whose lastActivity is kept
// unless ARGV[3] changes it too. It returns 0 when the session is
// missing, -1 when it holds other bytes, else {1, the session's PTTL
// afterwards}.
//
// KEYS[1]: the session.
var sessionCASScript = redis.NewScript(`
local raw = redis.call('GET', KEYS[1])
if not raw then
	return 0
end
local doc = ARGV[3]
if raw ~= ARGV[1] then
	if ARGV[2] ~= 'set' then
		return -1
	end
	local match, sub = string.match, string.sub
	local head = '^{"userId":"[^"\\]*","email":"[^"\\]*","role":"[^"\\]*","createdAt":"[^"\\]*","lastActivity":()"[^"\\]*"()'
	local r1, r2 = match(raw, head)
	local w1, w2 = match(ARGV[1], head)
	local n1, n2 = match(doc, head)
	if not (r1 and w1 and n1) or sub(raw, 1, r1 - 1) ~= sub(ARGV[1], 1, w1 - 1) or sub(raw, r2) ~= sub(ARGV[1], w2) then
		return -1
	end
	if sub(doc, n1, n2 - 1) == sub(ARGV[1], w1, w2 - 1) then
		doc = sub(doc, 1, n1 - 1) .. sub(raw, r1, r2 - 1) .. sub(doc, n2)
	end
end
if ARGV[2] == 'del' then
	redis.call('DEL', KEYS[1])
	return {1, -2}
end
redis.call('SET', KEYS[1], doc, 'KEEPTTL')
return {1, redis.call('PTTL', KEYS[1])}
`)

// compareAndSet replaces session id's bytes was with b, keeping its TTL,
// if it still holds was. It returns the outcome and, when done, the TTL
// left (0: none).
func (s *Service) compareAndSet(ctx context.Context, op, id string, was, b []byte) (int, time.Duration, error) {
	return s.runCAS(ctx, op, id, was, "set", b)
}

// compareAndDelete deletes session id if it still holds was.
func (s *Service) compareAndDelete(ctx context.Context, op, id string, was []byte) (int, time.Duration, error) {
	return s.runCAS(ctx, op, id, was, "del", nil)
}

func (s *Service) runCAS(ctx context.Context, op, id string, was []byte, mode string, b []byte) (int, time.Duration, error) {
	reply, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (any, error) {
		return sessionCASScript.Run(ctx, s.rdb, []string{s.key(sessionKey(id))}, was, mode, b).Result()
	})
	if err != nil {
		return 0, 0, err
	}
	switch r := reply.(type) {
	case int64:
		return int(r), 0, nil
	case []any:
		if len(r) == 2 {
			ttl, _ := r[1].(int64)
			return casDone, time.Duration(max(ttl, 0)) * time.Millisecond, nil
		}
	}
	return 0, 0, s.fail(ctx, op, sessionDisplayKey, fmt.Errorf("%w: unexpected script reply %T", ErrDecode, reply))
}

// pauseBeforeRetry waits before attempt (none before the first): a random
// pause of up to 1, 2, 4, 8, 16, then 32 ms, so that writers that
// collided spread out. It fails when ctx ends first.
func (s *Service) pauseBeforeRetry(ctx context.Context, op string, attempt int) error {
	if attempt == 0 {
		return nil
	}
	d := rand.N(time.Millisecond << min(attempt-1, 5))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return s.fail(ctx, op, sessionDisplayKey, ctx.Err())
	case <-t.C:
		return nil
	}
}

// cloneValues returns a deep copy of v, so that fn may change the bytes
// it was given without touching what was read.
func cloneValues(v map[string]json.RawMessage) map[string]json.RawMessage {
	if v == nil {
		return nil
	}
	c := make(map[string]json.RawMessage, len(v))
	for k, b := range v {
		c[k] = append(json.RawMessage(nil), b...)
	}
	return c
}
