package redisservice

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vevurn/redisservice/internal/localtier"
)

// sessionLoadScript reads a session for a request and, when its
// lastActivity is at least ARGV[4] ms old (or missing, or not a time),
// touches it as sessionTouchScript does: one round trip whether or not
// it touches. A session past its absolute end is deleted. It returns 0
// for a missing or ended session, else {the stored bytes (after the
// touch), the TTL in ms (-1: none; 0: not read), 1 when it touched,
// else 0}. The TTL of a session it did not touch is read only when the
// caller needs it: for a session of the original service (no
// idleTimeoutMs), and with ARGV[5] = 1.
//
// KEYS[1]: the session. ARGV: lastActivity for a touch (toISOString),
// now (unix ms), maximum lifetime (ms, 0: none), touch interval (ms),
// 1 to read the TTL of every session (else 0).
var sessionLoadScript = redis.NewScript(sessionTouchHead + `
if la then
	local at = millis(sub(raw, la[1], la[2]))
	if at and tonumber(ARGV[2]) - at < tonumber(ARGV[4]) then
		if idle then
			ttl = 0
			if ARGV[5] == '1' then
				ttl = redis.call('PTTL', KEYS[1])
			end
		end
		return {raw, ttl, 0}
	end
end
` + sessionTouchWrite + `
if ttl <= 0 then
	ttl = redis.call('PTTL', KEYS[1])
end
return {doc, ttl, 1}
`)

// loadedSession is a session as a request found it.
type loadedSession struct {
	raw     []byte // the stored bytes, after the touch
	data    SessionData
	ttl     time.Duration // left; -1: none; 0: not read (see sessionLoadScript)
	touched bool          // lastActivity and the idle expiry moved
}

// tierSession is a session as the local tier holds it, keyed by its key
// without the prefix (sessionKey): a type of its own, so that no Cache
// entry of the same key is ever taken for it.
type tierSession struct {
	raw  []byte // the stored bytes, for the save's check-and-set
	data SessionData
	end  time.Time // the stored absolute end; zero: none
}

// loadSession reads session id for a request, and touches it when its
// lastActivity is at least touchEvery old, in one round trip
// (sessionLoadScript); the session ends at CreatedAt plus lifetime at
// the latest (0: no limit but its own). Every request's read of its
// session goes through here.
//
// The user's index is written (one more round trip) only when the
// session could otherwise outlive its entry: after a touch of a session
// without a stored absolute end (with one, the entry lasts until that
// end), for a session of the original service (which joins the index with
// its remaining TTL), and for every session under LegacySessions, as
// GetSession does. It returns the session, true and the error when only
// that failed.
//
// With the local tier in use, a session whose lastActivity is less than
// touchEvery old (no touch due) comes from the tier when it holds it: no
// round trip. A read that did not touch leaves its session there; any
// write of the key (a touch, a save, a revocation, an expiry) drops it.
//
// Without the tier, a session whose touch hints (nil: none) says is not
// due is read with a plain GET, one command (readUntouched); the script
// runs when the GET shows it is needed after all, a second round trip.
func (s *Service) loadSession(ctx context.Context, op, id string, touchEvery, lifetime time.Duration, hints *touchHints) (_ loadedSession, _ bool, err error) {
	ctx, scope := s.tel.Begin(ctx, op, sessionDisplayKey)
	defer scope.End(ctx, &err)
	now := s.opts.Now()
	lt := s.local
	if s.closed.Load() || touchEvery <= 0 {
		lt = nil
	}
	if lt != nil {
		if c, _, ok := localtier.Get[*tierSession](lt, sessionKey(id), time.Now().UnixNano()); ok && c.fresh(now, touchEvery, lifetime) {
			s.found(true)
			return loadedSession{raw: c.raw, data: c.data}, true, nil
		}
	}
	if lt == nil && !s.opts.LegacySessions && !hints.due(id, now, touchEvery) {
		if ls, found, done, err := s.readUntouched(ctx, op, id, now, touchEvery, lifetime, hints); done {
			return ls, found, err
		}
	}
	stamp, err := appendTime(nil, fieldLastActivity, now)
	if err != nil {
		return loadedSession{}, false, invalid(op, sessionDisplayKey, err)
	}
	stamp = stamp[1 : len(stamp)-1]
	legacy := 0
	if s.opts.LegacySessions || lt != nil {
		legacy = 1 // every session is indexed with its TTL, as GetSession does; the tier needs the TTL
	}
	start := time.Now()
	args := []any{stamp, now.UnixMilli(), lifetime.Milliseconds(), touchEvery.Milliseconds(), legacy}
	var ticket localtier.Ticket
	reply, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (reply any, err error) {
		reply, ticket, err = s.runSessionLoad(ctx, lt, id, args)
		return reply, err
	})
	if err != nil {
		return loadedSession{}, false, err
	}
	if n, ok := reply.(int64); ok && n == 0 {
		s.found(false) // missing or ended
		return loadedSession{}, false, nil
	}
	raw, ttl, touched, ok := parseSessionLoad(reply)
	if !ok {
		return loadedSession{}, false, s.fail(ctx, op, sessionDisplayKey, fmt.Errorf("%w: unexpected script reply %T", ErrDecode, reply))
	}
	b := []byte(raw) // the decoded Values alias it
	doc, data, err := s.decodeSession(ctx, op, b)
	if err != nil {
		return loadedSession{}, false, err
	}
	s.found(true)
	if !doc.legacy() {
		hints.note(id, data.LastActivity)
	}
	ls := loadedSession{raw: b, data: data, ttl: time.Duration(ttl) * time.Millisecond, touched: touched == 1}
	if ttl < 0 {
		ls.ttl = -1
	}
	if lt != nil && !ls.touched && ttl != 0 {
		// A touch wrote the key: its invalidation would void the ticket.
		localtier.Put(lt, sessionKey(id), ticket, &tierSession{raw: b, data: data, end: doc.end()}, len(b), start, ls.ttl, 0)
	}
	// A TTL not read (0) is one nothing below needs: a session of this
	// package, not touched, without LegacySessions.
	if (s.opts.LegacySessions || doc.legacy() || (ls.touched && doc.end().IsZero())) && data.UserID != "" && ls.ttl > 0 {
		return ls, true, s.indexSession(ctx, op, data.UserID, id, now.Add(ls.ttl))
	}
	return ls, true, nil
}

// readUntouched reads session id with a plain GET (one command), for a
// request whose touch hints says is not due. It reports done == false,
// having counted nothing, when the stored session needs
// sessionLoadScript after all: a touch due (the session was rewritten
// with an older lastActivity), its absolute end come (the script deletes
// it), or a session of the original service (the index needs its TTL).
func (s *Service) readUntouched(ctx context.Context, op, id string, now time.Time, touchEvery, lifetime time.Duration, hints *touchHints) (_ loadedSession, found, done bool, _ error) {
	b, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) ([]byte, error) {
		cmd := getCmd(ctx, s.key(sessionKey(id)))
		if err := s.process(ctx, cmd); err != nil {
			return nil, err
		}
		return cmd.Bytes()
	})
	if err == redis.Nil { //nolint:errorlint // call returns redis.Nil unwrapped
		s.found(false)
		return loadedSession{}, false, true, nil
	}
	if err != nil {
		return loadedSession{}, false, true, err
	}
	doc, data, err := s.decodeSession(ctx, op, b)
	if err != nil {
		return loadedSession{}, false, true, err
	}
	// The rules the tier serves by: no touch due, no absolute end come.
	if doc.legacy() || !(&tierSession{data: data, end: doc.end()}).fresh(now, touchEvery, lifetime) {
		return loadedSession{}, false, false, nil
	}
	s.found(true)
	hints.note(id, data.LastActivity)
	return loadedSession{raw: b, data: data}, true, true, nil
}

// runSessionLoad runs sessionLoadScript for id with args. With the tier
// lt, it takes the tier's ticket before the read (an invalidation
// meanwhile keeps its value out) and, on a cluster, sends the read to the
// master whose tracking the ticket checks; a redirect raises the tier's
// doubt and the read goes through the cluster client without a ticket.
func (s *Service) runSessionLoad(ctx context.Context, lt *localtier.Tier, id string, args []any) (any, localtier.Ticket, error) {
	keys := []string{s.key(sessionKey(id))}
	var (
		reply  any
		err    error
		ticket localtier.Ticket
		node   *redis.Client
	)
	if lt != nil {
		ticket, node = s.localTicket(ctx, sessionKey(id))
	}
	if node != nil {
		reply, err = sessionLoadScript.Run(ctx, node, keys, args...).Result()
		if err != nil && isRedirect(err) {
			lt.RaiseDoubt()
			ticket, node = localtier.Ticket{}, nil
		}
	}
	if node == nil {
		reply, err = s.runScript(ctx, sessionLoadScript, keys, args...)
	}
	var rerr redis.Error
	if errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "ERR stored session") {
		err = fmt.Errorf("%w: %w", ErrDecode, err) // the script refused what GetSession cannot decode either
	}
	return reply, ticket, err
}

// parseSessionLoad reads sessionLoadScript's reply for a live session:
// the stored text, its PTTL (ms; -1: none; 0: not read) and whether the
// script touched it.
func parseSessionLoad(reply any) (raw string, ttl, touched int64, ok bool) {
	r, ok := reply.([]any)
	if !ok || len(r) != 3 {
		return "", 0, 0, false
	}
	raw, ok1 := r[0].(string)
	ttl, ok2 := r[1].(int64)
	touched, ok3 := r[2].(int64)
	return raw, ttl, touched, ok1 && ok2 && ok3
}

// fresh reports whether c may be served at now without asking Redis: no
// touch is due (its lastActivity is less than touchEvery old), and neither
// lifetime past CreatedAt nor its stored end has come.
func (c *tierSession) fresh(now time.Time, touchEvery, lifetime time.Duration) bool {
	if c.data.LastActivity.IsZero() || now.Sub(c.data.LastActivity) >= touchEvery {
		return false
	}
	if lifetime > 0 && !now.Before(c.data.CreatedAt.Add(lifetime)) {
		return false
	}
	return c.end.IsZero() || now.Before(c.end)
}
