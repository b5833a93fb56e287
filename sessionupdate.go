package redisservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
// Each attempt reads the session and calls fn on a copy (Values is never nil there: fn may
// add entries), then writes only what fn changed, if the session is unchanged since the read
// (two round trips); otherwise fn runs again on the fresh session, at most 32 times, then it
// fails with [ErrConflict]. fn must have no other effects. LastActivity is a field like any
// other: changed by fn, it is written as given (the TTL is kept); a concurrent
// [Service.UpdateSessionActivity] is a conflict only then. A write whose reply is lost and
// that go-redis sends again is applied once. A session past its absolute end (see
// [Service.GetSession]) counts as missing. A changed UserID, a reserved or non-UTF-8 Values
// key, a value that is not valid JSON, invalid UTF-8 in a field, or a nil fn fails with
// [ErrInvalidArgument]; when fn changes nothing, nothing is written.
//
// It reports whether the session exists. An error with false means nothing was written. An
// error with true means the write was sent but its outcome is unknown (a timeout, a dropped
// connection): the update may or may not have been applied. Re-read before retrying, or make
// fn idempotent (set values rather than increment them, or record a request id in Values and
// change nothing when it is there). A session of the original service, or any with
// [Options.LegacySessions], then joins its user's index (one more round trip; true with the
// error when only that fails). The whole call is bounded by ctx's deadline, or [Options.Timeout].
func (s *Service) UpdateSession(ctx context.Context, id string, fn func(*SessionData) error) (_ bool, err error) {
	const op = "updatesession"
	ctx, scope := s.tel.Begin(ctx, op, sessionDisplayKey)
	defer scope.End(ctx, &err)
	switch {
	case !validSessionID(id):
		return false, invalid(op, sessionDisplayKey, ErrInvalidKey)
	case fn == nil:
		return false, invalid(op, sessionDisplayKey, fmt.Errorf("%w: nil fn", ErrInvalidArgument))
	}
	return s.updateSession(ctx, op, id, nil, fn)
}

// updateSession is UpdateSession for a caller that has checked id and
// fn. When known is not nil, the first attempt takes it for the stored
// bytes instead of reading them (one round trip less when they have not
// changed since).
func (s *Service) updateSession(ctx context.Context, op, id string, known []byte, fn func(*SessionData) error) (bool, error) {
	ctx, done, err := s.begin(ctx)
	if err != nil {
		return false, s.fail(ctx, op, sessionDisplayKey, err)
	}
	defer done()
	for attempt := range sessionAttempts {
		if err := s.pauseBeforeRetry(ctx, op, attempt); err != nil {
			return false, err
		}
		raw := known
		known = nil
		if raw == nil {
			var found bool
			raw, found, err = s.readSession(ctx, op, id)
			if !found {
				return false, err
			}
		}
		doc, old, err := s.decodeSession(ctx, op, raw)
		if err != nil {
			return false, err
		}
		if s.sessionEnded(&doc, old) {
			_, err := s.delSessions(ctx, op, []string{id})
			return false, err
		}
		data := old
		data.Values = cloneValues(old.Values)
		if data.Values == nil {
			data.Values = map[string]json.RawMessage{}
		}
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
		case err != nil:
			return outcomeUnknown(err), err
		case status == casMissing:
			return false, nil
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

// outcomeUnknown reports whether a write that failed with err may have
// been applied all the same: it was (or may have been) sent, and no reply
// came back. Refusals before sending (fast failure, a closed Service or
// pool) and Redis's own error replies mean it was not.
func outcomeUnknown(err error) bool {
	return isConnError(err) && !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrClosed) &&
		!errors.Is(err, redis.ErrPoolTimeout) && !errors.Is(err, redis.ErrClosed)
}

// RenewSessionID moves a session to a new id from NewSessionID (against session fixation):
// same data and Values, same remaining idle time and absolute end, the old id unreadable once
// it returns, the user's index updated. A missing session is ("", false, nil).
//
// It reads the session with its TTL, writes the same bytes under the new id with that TTL,
// adds the new id to the user's index (the two count once against
// [Options.MaxSessionsPerUser]), deletes the old id only if it is unchanged, and drops the old
// id from the index: five round trips (more when the index is over the cap). The keys lie in
// different cluster slots, so a failure part-way leaves both ids alive for a moment, never
// neither; a lost reply that go-redis sends again is applied once. When the old session
// changed meanwhile, it starts again with the same new id, at most 32 times, then fails
// with [ErrConflict]; when it was destroyed or has ended, the result is ("", false, nil). The
// new id is deleted and dropped from the index in both cases, and when adding it to the
// index fails ("", false and the error; the old id is untouched).
//
// When the delete of the old id fails, it may have run all the same (a timeout, say): the
// result is the new id, true and the error. The new session is alive and indexed; the old
// one may be too. Use the new id and finish with [Service.DestroySession] of the old id (a
// change made to the old session in between is not carried over). When only the last step
// fails, the result is the new id, true and the error too.
func (s *Service) RenewSessionID(ctx context.Context, id string) (_ string, _ bool, err error) {
	const op = "renewsessionid"
	ctx, scope := s.tel.Begin(ctx, op, sessionDisplayKey)
	defer scope.End(ctx, &err)
	if !validSessionID(id) {
		return "", false, invalid(op, sessionDisplayKey, ErrInvalidKey)
	}
	newID, _, ok, err := s.renewSessionID(ctx, op, id)
	return newID, ok, err
}

// renewSessionID is RenewSessionID for a valid id. It also returns the
// TTL the new key got (0: none), when it returns the new id.
func (s *Service) renewSessionID(ctx context.Context, op, id string) (string, time.Duration, bool, error) {
	ctx, done, err := s.begin(ctx)
	if err != nil {
		return "", 0, false, s.fail(ctx, op, sessionDisplayKey, err)
	}
	defer done()
	r := renewal{s: s, op: op}
	defer r.abandon(ctx)
	for attempt := range sessionAttempts {
		if err := s.pauseBeforeRetry(ctx, op, attempt); err != nil {
			return "", 0, false, err
		}
		raw, ttl, found, err := s.readSessionTTL(ctx, op, id)
		if !found {
			return "", 0, false, err
		}
		uid := ""
		var end time.Time
		if doc, err := parseSessionDoc(raw); err == nil {
			if data, err := doc.data(); err == nil && s.sessionEnded(&doc, data) {
				_, err := s.delSessions(ctx, op, []string{id})
				return "", 0, false, err
			}
			uid, end = doc.userID(), doc.end()
		}
		// 1 and 2: the new key, then its index entry (without it
		// log-out-everywhere would miss the new id).
		if err := r.write(ctx, raw, ttl, uid, end); err != nil {
			return "", 0, false, err
		}
		// 3: the old key, if nobody changed or destroyed it meanwhile.
		status, err := s.compareAndDelete(ctx, op, id, raw)
		switch {
		case err != nil:
			// The delete may have run (a reply lost to a timeout): the
			// new key is all that is sure to hold the session, so keep it.
			return r.keep(), ttl, true, err
		case status == casMissing:
			return "", 0, false, nil
		case status == casChanged:
			continue
		}
		// 4: the old id's index entry.
		newID := r.keep()
		if uid != "" {
			err = s.unindexSessions(ctx, op, uid, []string{id})
		}
		return newID, ttl, true, err
	}
	return "", 0, false, invalid(op, sessionDisplayKey, ErrConflict) // the old session is as others left it
}

// renewal is the new id of one RenewSessionID call, kept across its
// attempts, so that a conflict leaves no id behind.
type renewal struct {
	s       *Service
	op      string
	id      string // the new id, once its key may exist
	indexed string // the user whose index may name it
	kept    bool   // the caller has it: never undone
}

// write stores raw under the new id with ttl (0: none) and adds the id
// to uid's index (unless uid is empty or ttl 0), at the session's
// absolute end when it has one (end), as createSession does. The first
// write makes the id (SET NX); later ones overwrite it with the bytes
// read anew.
func (r *renewal) write(ctx context.Context, raw []byte, ttl time.Duration, uid string, end time.Time) error {
	s := r.s
	if r.id != "" {
		if _, err := call(s, ctx, r.op, sessionDisplayKey, func(ctx context.Context) (string, error) {
			return s.rdb.Set(ctx, s.key(sessionKey(r.id)), raw, ttl).Result()
		}); err != nil {
			return err
		}
	}
	for r.id == "" {
		id, err := NewSessionID()
		if err != nil {
			return invalid(r.op, sessionDisplayKey, err)
		}
		created, err := call(s, ctx, r.op, sessionDisplayKey, func(ctx context.Context) (bool, error) {
			return s.rdb.SetNX(ctx, s.key(sessionKey(id)), raw, ttl).Result()
		})
		if err != nil {
			r.id = id // it may have been written
			return err
		}
		if !created {
			// Taken: never seen with 256 random bits, but for this very
			// write, whose reply was lost and that go-redis sent again.
			b, found, err := s.readSession(ctx, r.op, id)
			if err != nil {
				return err
			}
			if !found || !bytes.Equal(b, raw) {
				continue
			}
		}
		r.id = id
	}
	if r.indexed != "" && r.indexed != uid {
		r.unindex(ctx) // the stored userId changed between attempts
	}
	if uid == "" || ttl <= 0 {
		return nil
	}
	r.indexed = uid
	// Until the old id is deleted it is indexed too: they count once
	// against the cap, lest the one session evict itself.
	expiry := s.opts.Now().Add(ttl)
	if !end.IsZero() {
		expiry = end
	}
	expiries := map[string]time.Time{r.id: expiry}
	_, err := s.indexSessions(ctx, r.op, uid, expiries, s.opts.MaxSessionsPerUser+1)
	return err
}

// keep hands the new id to the caller: it is never undone.
func (r *renewal) keep() string {
	r.kept = true
	return r.id
}

// abandon deletes the new id and drops it from the index, unless kept.
// It is best effort: a key left behind ends with its TTL, and an index
// entry without its session never counts against the cap.
func (r *renewal) abandon(ctx context.Context) {
	if r.kept || r.id == "" {
		return
	}
	_, _ = r.s.delSessions(ctx, r.op, []string{r.id})
	r.unindex(ctx)
}

// unindex drops the new id from the index that may name it.
func (r *renewal) unindex(ctx context.Context) {
	if r.indexed == "" {
		return
	}
	_ = r.s.unindexSessions(ctx, r.op, r.indexed, []string{r.id})
	r.indexed = ""
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
