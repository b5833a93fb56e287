package redisservice

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"time"
)

// NewSessionID returns a new session id: 256 bits from crypto/rand,
// base64url without padding (43 characters, URL-unreserved only).
func NewSessionID() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("redisservice: new session id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// CreateSession stores data under id with the idle time to live ttl
// (at least one millisecond) and adds id to its user's index, which
// [Service.DestroyUserSessions] and [Service.UserSessions] read. A zero
// CreatedAt or LastActivity is set to now; times are stored with
// millisecond precision. data.Values are stored beside the seven fields,
// each exactly as given. With [Options.SessionMaxLifetime] the session
// also ends at CreatedAt plus that lifetime, however active it is. A user
// with more than [Options.MaxSessionsPerUser] live sessions loses the ones
// closest to expiring; index entries of sessions that are gone never
// count. An invalid id or empty key fails with [ErrInvalidKey]; an empty
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
	ctx, scope := s.tel.Begin(ctx, op, sessionDisplayKey)
	defer scope.End(ctx, &err)
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

// GetSession returns the session stored under id, with every stored field
// beyond the seven in Values, byte for byte. An unknown or expired id is
// the zero SessionData, false, nil; so is a session past its absolute end
// (CreatedAt plus [Options.SessionMaxLifetime] as set now, whenever the
// session was created), which is then deleted (one more round trip). An
// empty id, one over 256 bytes or with a character outside
// A-Z a-z 0-9 - . _ ~ fails with [ErrInvalidKey] without asking Redis. A
// stored value that is not a JSON object with the seven fields' types, or
// whose member names repeat (see docs/sessions.md, "Caveats"), is false with [ErrDecode].
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
	ctx, scope := s.tel.Begin(ctx, op, sessionDisplayKey)
	defer scope.End(ctx, &err)
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

// DestroySession deletes the session, drops it from its user's index
// and reports whether it existed: two round trips (one when it did not
// exist). A lost reply that go-redis sends again does not change the
// answer.
func (s *Service) DestroySession(ctx context.Context, id string) (_ bool, err error) {
	const op = "destroysession"
	ctx, scope := s.tel.Begin(ctx, op, sessionDisplayKey)
	defer scope.End(ctx, &err)
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
	return true, s.unindexSessions(ctx, op, uid, []string{id})
}
