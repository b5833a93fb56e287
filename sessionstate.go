package redisservice

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"sync"
	"time"
	"unicode/utf8"
)

// Login starts a new session for data.UserID under a new id and sends its cookie, destroying
// any session the request carried (so that an id known before the log-in is never the
// session's after it: no fixation). A zero CreatedAt or LastActivity is set to now, an empty IP
// to the client's address (see [SessionConfig.TrustedProxies]) and an empty UserAgent to the
// request's. The session gets the manager's IdleTimeout and Lifetime, joins its user's index,
// and counts against [Options.MaxSessionsPerUser] as with [Service.CreateSession]. Changes made
// earlier in the request go with the carried session.
//
// data is checked first (an empty UserID, or what CreateSession refuses: [ErrInvalidArgument]),
// then the carried session destroyed, then the new one stored: when a step fails, Login returns
// its error and the later steps do not run; the cookie is not replaced. Four round trips (two
// without a carried session).
func (m *SessionManager) Login(ctx context.Context, data SessionData) (err error) {
	const op = "login"
	return m.scoped(ctx, op, func(ctx context.Context, st *sessionState) error {
		if data.UserID == "" {
			return invalid(op, sessionDisplayKey, fmt.Errorf("%w: empty UserID", ErrInvalidArgument))
		}
		if data.IP == "" {
			data.IP = m.clientIP(st.req)
		}
		if data.UserAgent == "" {
			data.UserAgent = st.req.UserAgent()
		}
		p, err := m.s.prepareSession(op, data, m.cfg.IdleTimeout, m.cfg.Lifetime)
		if err != nil {
			return err
		}
		if err := st.destroyCarried(ctx); err != nil {
			return err
		}
		id, err := NewSessionID()
		if err != nil {
			return invalid(op, sessionDisplayKey, err)
		}
		if err := m.s.storeSession(ctx, op, id, p); err != nil {
			// The key may be stored and not indexed: log-out-everywhere
			// would miss it.
			_, _ = m.s.delSessions(ctx, op, []string{id})
			return err
		}
		_, stored, err := m.s.decodeSession(ctx, op, p.raw)
		if err != nil {
			return err
		}
		m.hints.note(id, stored.LastActivity)
		st.id, st.data, st.raw, st.changes = id, stored, p.raw, nil
		st.expires = m.s.opts.Now().Add(p.life)
		st.cookie = cookieSet
		return nil
	})
}

// Logout destroys the request's session and expires its cookie. A request without a session
// that carried a cookie gets it expired too; one without either is left alone. When the
// destroy fails (Redis down), Logout returns the error and changes nothing, the cookie
// included: the session is still alive, so the user should not be told it ended. Two round
// trips (none without a session).
func (m *SessionManager) Logout(ctx context.Context) (err error) {
	const op = "logout"
	return m.scoped(ctx, op, func(ctx context.Context, st *sessionState) error {
		had := st.id != "" || st.carried
		if err := st.destroyCarried(ctx); err != nil {
			return err
		}
		if had {
			st.cookie = cookieExpire
		}
		return nil
	})
}

// RenewID moves the request's session to a new id and sends it (against session fixation:
// call it when the user's privileges change), with [Service.RenewSessionID]: same data, same
// deadlines, the old id unusable afterwards. Changes made in the request are saved under the
// new id. Without a session it fails with [ErrNoSession]; so it does when the session was
// destroyed meanwhile. When the renewal fails part-way with the new id alive, the request
// moves to it, the old id is destroyed, and only if that fails too is the error returned. Five
// round trips.
func (m *SessionManager) RenewID(ctx context.Context) (err error) {
	const op = "renewid"
	return m.scoped(ctx, op, func(ctx context.Context, st *sessionState) error {
		if st.id == "" {
			return invalid(op, sessionDisplayKey, ErrNoSession)
		}
		old, before := st.id, m.s.opts.Now()
		newID, ttl, ok, err := m.s.renewSessionID(ctx, op, old)
		switch {
		case !ok && err == nil:
			st.clear()
			return invalid(op, sessionDisplayKey, ErrNoSession)
		case !ok:
			return err
		}
		st.id, st.cookie, st.expires = newID, cookieSet, time.Time{}
		if ttl > 0 {
			st.expires = before.Add(ttl) // the new key's TTL counts from after before
		}
		if err != nil {
			if _, derr := m.s.DestroySession(ctx, old); derr != nil {
				return err
			}
		}
		return nil
	})
}

// Session returns the request's session with this request's changes applied, and whether
// there is one. The result is a copy: changing it changes nothing (use Put). Values is nil
// when the session has none.
func (m *SessionManager) Session(ctx context.Context) (SessionData, bool) {
	st := m.state(ctx)
	if st == nil {
		return SessionData{}, false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.id == "" {
		return SessionData{}, false
	}
	d := st.data
	d.Values = cloneValues(d.Values)
	for name, v := range st.changes {
		if d.Values == nil {
			d.Values = make(map[string]json.RawMessage, len(st.changes))
		}
		if v == nil {
			delete(d.Values, name)
		} else {
			d.Values[name] = append(json.RawMessage(nil), v...)
		}
	}
	if len(d.Values) == 0 {
		d.Values = nil
	}
	return d, true
}

// ID returns the request's session id, "" without a session. It is a bearer secret: do not
// log it.
func (m *SessionManager) ID(ctx context.Context) string {
	st := m.state(ctx)
	if st == nil {
		return ""
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.id
}

// LoadErr returns why the request's session could not be loaded (Redis down or slow, a
// stored session that does not decode), or nil. A handler can tell "no session" from
// "sessions unavailable" with it, and answer 503 rather than ask for a log-in.
func (m *SessionManager) LoadErr(ctx context.Context) error {
	st := m.state(ctx)
	if st == nil {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.loadErr
}

// Put sets the session's value name to v as JSON (encoding/json, without HTML escaping, as
// JSON.stringify writes), saved with the request (see [SessionManager.LoadAndSave]). A value
// encoding/json cannot encode, a name that is not valid UTF-8 or that the session keeps for
// itself (SessionData's seven JSON names, "idleTimeoutMs", "expiresAtMs") fails with
// [ErrInvalidArgument]; without a session it fails with [ErrNoSession]. No round trip.
func (m *SessionManager) Put(ctx context.Context, name string, v any) error {
	const op = "put"
	switch {
	case reservedSessionField(name):
		return invalid(op, name, fmt.Errorf("%w: a name the session keeps for itself", ErrInvalidArgument))
	case !utf8.ValidString(name):
		return invalid(op, name, fmt.Errorf("%w: name is not valid UTF-8", ErrInvalidArgument))
	}
	b, err := marshalValue(v)
	if err != nil {
		return invalid(op, name, fmt.Errorf("%w: %w", ErrInvalidArgument, err))
	}
	st, err := m.begin(ctx, op)
	if err != nil {
		return err
	}
	defer st.mu.Unlock()
	if st.id == "" {
		return invalid(op, name, ErrNoSession)
	}
	st.change(name, b)
	return nil
}

// Remove deletes the session's value name, saved with the request. It does nothing without a
// session, outside LoadAndSave, or once the response has begun. No round trip.
func (m *SessionManager) Remove(ctx context.Context, name string) {
	st, err := m.begin(ctx, "remove")
	if err != nil {
		return
	}
	defer st.mu.Unlock()
	if st.id != "" {
		st.change(name, nil)
	}
}

// SessionValue decodes the session's value name, with this request's changes applied, into a
// T (encoding/json: unknown object fields are ignored), and reports whether it is there. A
// value that does not decode into a T, null included unless a T can be nil, is the zero T,
// false and an error matching [ErrDecode]. Without a session: the zero T, false, nil. No round
// trip.
func SessionValue[T any](ctx context.Context, m *SessionManager, name string) (T, bool, error) {
	var zero T
	st := m.state(ctx)
	if st == nil {
		return zero, false, nil
	}
	st.mu.Lock()
	raw, ok := st.value(name)
	st.mu.Unlock()
	if !ok {
		return zero, false, nil
	}
	return decodeValue[T]("sessionvalue", name, raw)
}

// PopSessionValue is [SessionValue] followed by [SessionManager.Remove] of the value (a flash
// message), in one step; a value that does not decode stays. Once the response has begun, the
// removal could not be saved: it then fails with [ErrInvalidArgument]. No round trip.
func PopSessionValue[T any](ctx context.Context, m *SessionManager, name string) (T, bool, error) {
	const op = "popsessionvalue"
	var zero T
	if m.state(ctx) == nil {
		return zero, false, nil
	}
	st, err := m.begin(ctx, op)
	if err != nil {
		return zero, false, err
	}
	defer st.mu.Unlock()
	raw, ok := st.value(name)
	if !ok {
		return zero, false, nil
	}
	v, found, err := decodeValue[T](op, name, raw)
	if err == nil {
		st.change(name, nil)
	}
	return v, found, err
}

// marshalValue encodes v as JSON.stringify would: without escaping <, >
// and & (encoding/json's HTML escaping).
func marshalValue(v any) (json.RawMessage, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// decodeValue decodes raw into a T. null is refused unless a T can be
// nil: a zero value must never pass for a stored one.
func decodeValue[T any](op, name string, raw json.RawMessage) (T, bool, error) {
	var v T
	var err error
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		switch reflect.TypeFor[T]().Kind() {
		case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice:
		default:
			err = fmt.Errorf("null is not a %v", reflect.TypeFor[T]())
		}
	} else {
		err = json.Unmarshal(raw, &v)
	}
	if err != nil {
		var zero T
		return zero, false, wrapOp(op, name, fmt.Errorf("%w: %w", ErrDecode, err))
	}
	return v, true, nil
}

// cookieAction is what the response does with the session cookie.
type cookieAction uint8

const (
	cookieKeep   cookieAction = iota // send none
	cookieSet                        // send the id, with the idle deadline
	cookieExpire                     // make the browser drop it
)

// sessionState is one request's session under LoadAndSave: what was
// loaded, what the handler changed, and what the response must do.
type sessionState struct {
	m   *SessionManager
	req *http.Request // with this state in its context

	mu       sync.Mutex // guards the fields below
	carried  bool       // the request carried a cookie of the manager's name
	cookieID string     // the first valid session id among those cookies
	loadErr  error      // why cookieID's session could not be loaded
	id       string     // the session's id now; "" without a session
	data     SessionData
	raw      []byte                     // the stored bytes as last seen (nil: unknown), for the save's first attempt
	changes  map[string]json.RawMessage // by name: the JSON to store, nil to delete
	expires  time.Time                  // the session's idle deadline as last seen; zero: none known
	cookie   cookieAction
	saved    bool // the response has begun: later changes cannot be saved
}

// errNotInRequest is the error of a call whose ctx is not a request's
// under LoadAndSave.
var errNotInRequest = fmt.Errorf("%w: ctx is not that of a request under LoadAndSave", ErrInvalidArgument)

// errResponseBegun is the error of a change made once the response has
// begun: the session was saved already.
var errResponseBegun = fmt.Errorf("%w: the response has begun and the session was saved", ErrInvalidArgument)

// scoped runs fn for one call of op of the manager: inside the call's
// telemetry scope, with the request's session state locked.
func (m *SessionManager) scoped(ctx context.Context, op string, fn func(ctx context.Context, st *sessionState) error) (err error) {
	ctx, scope := m.s.tel.Begin(ctx, op, sessionDisplayKey)
	defer scope.End(ctx, &err)
	st, err := m.begin(ctx, op)
	if err != nil {
		return err
	}
	defer st.mu.Unlock()
	return fn(ctx, st)
}

// begin returns the request's state, locked, for op, or an error when
// there is none or the response has begun.
func (m *SessionManager) begin(ctx context.Context, op string) (*sessionState, error) {
	st := m.state(ctx)
	if st == nil {
		return nil, invalid(op, sessionDisplayKey, errNotInRequest)
	}
	st.mu.Lock()
	if st.saved {
		st.mu.Unlock()
		return nil, invalid(op, sessionDisplayKey, errResponseBegun)
	}
	return st, nil
}

// destroyCarried destroys the request's session, or, when it could not
// be loaded, the one its cookie names, and forgets it.
func (st *sessionState) destroyCarried(ctx context.Context) error {
	id := st.id
	if id == "" && st.loadErr != nil {
		id = st.cookieID
	}
	if id != "" {
		if _, err := st.m.s.DestroySession(ctx, id); err != nil {
			return err
		}
	}
	if id == st.cookieID {
		st.cookieID = ""
	}
	st.clear()
	return nil
}

// clear forgets the session.
func (st *sessionState) clear() {
	st.id, st.data, st.raw, st.changes, st.expires = "", SessionData{}, nil, nil, time.Time{}
}

// change records a Put (v) or Remove (nil) of name.
func (st *sessionState) change(name string, v json.RawMessage) {
	if st.changes == nil {
		st.changes = make(map[string]json.RawMessage, 4)
	}
	st.changes[name] = v
}

// value returns the value name with this request's changes applied.
func (st *sessionState) value(name string) (json.RawMessage, bool) {
	if st.id == "" {
		return nil, false
	}
	if v, ok := st.changes[name]; ok {
		return v, v != nil
	}
	v, ok := st.data.Values[name]
	return v, ok
}

// save writes the request's changes into the stored session, as a merge
// (see LoadAndSave), and sets the cookie on h. Changes can no longer be
// made afterwards.
func (st *sessionState) save(h http.Header) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.saved = true
	var err error
	if st.id != "" && len(st.changes) > 0 {
		err = st.m.s.saveSessionChanges(context.WithoutCancel(st.req.Context()), st.id, st.raw, maps.Clone(st.changes))
	}
	st.writeCookie(h)
	return err
}
