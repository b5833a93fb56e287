package redisservice

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/vevurn/redisservice/internal/jsonobj"
)

// A session is stored as one JSON object. This file maps SessionData to
// that object and back; internal/jsonobj reads and writes it member by
// member, keeping each member's bytes as stored, so that fields this
// package does not change (the application's Values, and fields another
// writer put there) survive every update byte for byte.

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

// Top-level names of the stored session object. The first seven are
// SessionData's fields, in the order JSON.stringify writes them in the
// original service; the last two are this package's own.
const (
	fieldUserID       = "userId"
	fieldEmail        = "email"
	fieldRole         = "role"
	fieldCreatedAt    = "createdAt"
	fieldLastActivity = "lastActivity"
	fieldIP           = "ip"
	fieldUserAgent    = "userAgent"
	fieldIdleTimeout  = "idleTimeoutMs" // the idle TTL the session was created with
	fieldExpiresAt    = "expiresAtMs"   // absolute end (unix ms) under SessionMaxLifetime
)

// reservedSessionField reports whether name is one of SessionData's seven
// fields or a field this package uses internally: never a key of Values.
func reservedSessionField(name string) bool {
	switch name {
	case fieldUserID, fieldEmail, fieldRole, fieldCreatedAt, fieldLastActivity, fieldIP, fieldUserAgent,
		fieldIdleTimeout, fieldExpiresAt:
		return true
	}
	return false
}

// isoMillis is the layout of JavaScript's Date.prototype.toISOString, in
// which this package writes times: UTC, milliseconds, "Z".
const isoMillis = "2006-01-02T15:04:05.000Z"

// errNotObject says a stored session is valid JSON but not an object.
var errNotObject = errors.New("stored session is not a JSON object")

// sessionDoc is a stored session object, split into its members in stored
// order.
type sessionDoc struct {
	obj jsonobj.Object
}

// parseSessionDoc splits b, which must be one JSON object, into its
// members. The members' bytes alias b. It refuses an object in which a
// member name repeats (once decoded), a name that is not valid UTF-8, and
// one of the session's own names written with an escape: encoding/json
// would take the last of repeated members, and invalid UTF-8 would
// become U+FFFD, while the touch script reads names as stored; refusing
// them means both always mean the same member.
func parseSessionDoc(b []byte) (sessionDoc, error) {
	obj, err := jsonobj.Parse(b, reservedSessionField)
	if errors.Is(err, jsonobj.ErrNotObject) {
		err = errNotObject
	}
	return sessionDoc{obj: obj}, err
}

// get returns the value of the last member called name.
func (d *sessionDoc) get(name string) ([]byte, bool) {
	return d.obj.Get(name)
}

// data decodes the session: the seven fields, and every other member but
// this package's own into Values (nil when there are none). The Values
// alias the document's bytes.
func (d *sessionDoc) data() (SessionData, error) {
	var sd SessionData
	for _, m := range d.obj.Members {
		var err error
		switch m.Name {
		case fieldUserID:
			err = jsonobj.DecodeString(m.Value, &sd.UserID)
		case fieldEmail:
			err = jsonobj.DecodeString(m.Value, &sd.Email)
		case fieldRole:
			err = jsonobj.DecodeString(m.Value, &sd.Role)
		case fieldIP:
			err = jsonobj.DecodeString(m.Value, &sd.IP)
		case fieldUserAgent:
			err = jsonobj.DecodeString(m.Value, &sd.UserAgent)
		case fieldCreatedAt:
			err = decodeTime(m.Value, &sd.CreatedAt)
		case fieldLastActivity:
			err = decodeTime(m.Value, &sd.LastActivity)
		case fieldIdleTimeout, fieldExpiresAt:
		default:
			if sd.Values == nil {
				sd.Values = make(map[string]json.RawMessage, len(d.obj.Members))
			}
			sd.Values[m.Name] = m.Value
		}
		if err != nil {
			return SessionData{}, fmt.Errorf("%s: %w", m.Name, err)
		}
	}
	return sd, nil
}

// userID returns the stored userId, or "" when it is missing or not a
// string.
func (d *sessionDoc) userID() string {
	var uid string
	if v, ok := d.get(fieldUserID); ok && jsonobj.DecodeString(v, &uid) == nil {
		return uid
	}
	return ""
}

// end returns the stored absolute end (expiresAtMs), or the zero Time
// when there is none.
func (d *sessionDoc) end() time.Time {
	if v, ok := d.get(fieldExpiresAt); ok {
		if ms, err := strconv.ParseInt(string(v), 10, 64); err == nil && ms > 0 {
			return time.UnixMilli(ms)
		}
	}
	return time.Time{}
}

// legacy reports whether the session was written by the original service,
// which does not record the idle TTL.
func (d *sessionDoc) legacy() bool {
	_, ok := d.get(fieldIdleTimeout)
	return !ok
}

// decodeTime decodes an RFC 3339 JSON string (or null, leaving *dst alone).
func decodeTime(v []byte, dst *time.Time) error {
	return dst.UnmarshalJSON(v)
}

// apply returns the document with data's changes from the stored session
// old: a seven-field value that differs from old's is written anew, as are
// Values entries added or changed; removed entries are dropped; every
// other member keeps its bytes and place. New members go at the end, but
// before idleTimeoutMs and expiresAtMs when those are last. It reports
// whether anything changed.
func (d *sessionDoc) apply(old, data SessionData) ([]byte, bool, error) {
	if err := checkSession(data); err != nil {
		return nil, false, err
	}
	changed := map[string][]byte{}
	setString := func(name, was, now string) {
		if was != now {
			changed[name] = jsonobj.AppendString(nil, now)
		}
	}
	setString(fieldUserID, old.UserID, data.UserID)
	setString(fieldEmail, old.Email, data.Email)
	setString(fieldRole, old.Role, data.Role)
	setString(fieldIP, old.IP, data.IP)
	setString(fieldUserAgent, old.UserAgent, data.UserAgent)
	for _, t := range []struct {
		name     string
		was, now time.Time
	}{{fieldCreatedAt, old.CreatedAt, data.CreatedAt}, {fieldLastActivity, old.LastActivity, data.LastActivity}} {
		if !t.was.Equal(t.now) {
			v, err := appendTime(nil, t.name, t.now)
			if err != nil {
				return nil, false, err
			}
			changed[t.name] = v
		}
	}
	removed := map[string]bool{}
	for name, was := range old.Values {
		now, ok := data.Values[name]
		switch {
		case !ok:
			removed[name] = true
		case !bytes.Equal(was, now):
			changed[name] = now
		}
	}
	for name, v := range data.Values {
		if _, ok := old.Values[name]; !ok {
			changed[name] = v
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return nil, false, nil
	}
	// A seven-field member the stored object lacked goes first, then new
	// Values sorted by name; all before this package's own members when
	// those come last, where UpdateSessionActivity looks for them first.
	return d.obj.Edit(jsonobj.Changes{
		Set:    changed,
		Delete: removed,
		Order:  []string{fieldUserID, fieldEmail, fieldRole, fieldCreatedAt, fieldLastActivity, fieldIP, fieldUserAgent},
		Last:   func(name string) bool { return name == fieldIdleTimeout || name == fieldExpiresAt },
	}), true, nil
}

// encodeSession writes a new session object: the seven fields in the
// original service's order, the Values sorted by name, then internals.
func encodeSession(data SessionData, idleMS, expiresAtMS int64) ([]byte, error) {
	if err := checkSession(data); err != nil {
		return nil, err
	}
	out := make([]byte, 0, 256)
	out = append(out, '{')
	for _, f := range []struct{ name, v string }{{fieldUserID, data.UserID}, {fieldEmail, data.Email}, {fieldRole, data.Role}} {
		out = jsonobj.AppendMember(out, jsonobj.AppendString(nil, f.name), jsonobj.AppendString(nil, f.v))
	}
	for _, f := range []struct {
		name string
		t    time.Time
	}{{fieldCreatedAt, data.CreatedAt}, {fieldLastActivity, data.LastActivity}} {
		v, err := appendTime(nil, f.name, f.t)
		if err != nil {
			return nil, err
		}
		out = jsonobj.AppendMember(out, jsonobj.AppendString(nil, f.name), v)
	}
	for _, f := range []struct{ name, v string }{{fieldIP, data.IP}, {fieldUserAgent, data.UserAgent}} {
		out = jsonobj.AppendMember(out, jsonobj.AppendString(nil, f.name), jsonobj.AppendString(nil, f.v))
	}
	names := make([]string, 0, len(data.Values))
	for name := range data.Values {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		out = jsonobj.AppendMember(out, jsonobj.AppendString(nil, name), data.Values[name])
	}
	out = jsonobj.AppendMember(out, jsonobj.AppendString(nil, fieldIdleTimeout), fmt.Appendf(nil, "%d", idleMS))
	if expiresAtMS > 0 {
		out = jsonobj.AppendMember(out, jsonobj.AppendString(nil, fieldExpiresAt), fmt.Appendf(nil, "%d", expiresAtMS))
	}
	return append(out, '}'), nil
}

// checkSession refuses a string field or Values key that is not valid
// UTF-8 (JSON would change its bytes: two keys could become one), a
// Values key that is a reserved name and a value that is not one valid
// JSON value.
func checkSession(data SessionData) error {
	for _, f := range []struct{ name, v string }{{fieldUserID, data.UserID}, {fieldEmail, data.Email},
		{fieldRole, data.Role}, {fieldIP, data.IP}, {fieldUserAgent, data.UserAgent}} {
		if !utf8.ValidString(f.v) {
			return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidArgument, f.name)
		}
	}
	for name, v := range data.Values {
		if !utf8.ValidString(name) {
			return fmt.Errorf("%w: Values key %q is not valid UTF-8", ErrInvalidArgument, name)
		}
		if reservedSessionField(name) {
			return fmt.Errorf("%w: Values[%q] is a reserved session field", ErrInvalidArgument, name)
		}
		if !json.Valid(v) {
			return fmt.Errorf("%w: Values[%q] is not valid JSON", ErrInvalidArgument, name)
		}
	}
	return nil
}

// appendTime appends t, the value of the field name, as JSON.stringify
// writes a Date: toISOString, in UTC with milliseconds. Sub-millisecond
// precision is dropped. A year toISOString cannot write in four digits
// fails with ErrInvalidArgument, naming the field after the sentinel's
// text (wrapOp names the package once, before it).
func appendTime(out []byte, name string, t time.Time) ([]byte, error) {
	t = t.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		return nil, fmt.Errorf("%w: %s: year %d outside 0000-9999", ErrInvalidArgument, name, y)
	}
	out = append(out, '"')
	out = t.AppendFormat(out, isoMillis)
	return append(out, '"'), nil
}
