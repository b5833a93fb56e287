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
)

// A session is stored as one JSON object. This file reads and writes that
// object member by member, keeping each member's bytes as stored, so that
// fields this package does not change (the application's Values, and
// fields another writer put there) survive every update byte for byte.

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

// member is one top-level member of a stored session object.
type member struct {
	name  string // the decoded name
	raw   []byte // the name as stored, quotes included
	value []byte // the value as stored
}

// sessionDoc is a stored session object, split into its members in stored
// order.
type sessionDoc struct {
	members []member
}

// parseSessionDoc splits b, which must be one JSON object, into its
// members. The members' bytes alias b. It refuses an object in which a
// member name repeats (once decoded), a name that is not valid UTF-8, and
// one of the session's own names written with an escape: encoding/json
// would take the last of repeated members, and invalid UTF-8 would
// become U+FFFD, while the touch script reads names as stored; refusing
// them means both always mean the same member.
func parseSessionDoc(b []byte) (sessionDoc, error) {
	if !json.Valid(b) {
		// Let encoding/json say where and why.
		var v any
		err := json.Unmarshal(b, &v)
		if err == nil {
			err = errors.New("invalid JSON")
		}
		return sessionDoc{}, err
	}
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return sessionDoc{}, errNotObject
	}
	var d sessionDoc
	d.members = make([]member, 0, 16)
	var seen map[string]bool // the names so far, once there are many
	i = skipSpace(b, i+1)
	if b[i] == '}' {
		return d, nil
	}
	for {
		// b is valid JSON, so each step finds what the grammar says.
		end := skipValue(b, i)
		raw := b[i:end]
		name, err := decodeName(raw)
		if err != nil {
			return sessionDoc{}, err
		}
		if err := d.checkName(name, raw, &seen); err != nil {
			return sessionDoc{}, err
		}
		i = skipSpace(b, end)
		i = skipSpace(b, i+1) // ':'
		end = skipValue(b, i)
		d.members = append(d.members, member{name: name, raw: raw, value: b[i:end]})
		i = skipSpace(b, end)
		if b[i] == '}' {
			return d, nil
		}
		i = skipSpace(b, i+1) // ','
	}
}

// checkName refuses the member name (decoded; raw as stored) when it
// cannot follow d's members: see parseSessionDoc. Repeats are found by
// comparison while there are few members, then with *seen.
func (d *sessionDoc) checkName(name string, raw []byte, seen *map[string]bool) error {
	switch {
	case !utf8.Valid(raw):
		return fmt.Errorf("member name %q is not valid UTF-8", raw)
	case bytes.IndexByte(raw, '\\') >= 0 && reservedSessionField(name):
		return fmt.Errorf("member name %s spells %q with an escape", raw, name)
	}
	const few = 32
	if len(d.members) < few {
		for _, m := range d.members {
			if m.name == name {
				return fmt.Errorf("member name %q repeats", name)
			}
		}
		return nil
	}
	if *seen == nil {
		*seen = make(map[string]bool, 2*few)
		for _, m := range d.members {
			(*seen)[m.name] = true
		}
	}
	if (*seen)[name] {
		return fmt.Errorf("member name %q repeats", name)
	}
	(*seen)[name] = true
	return nil
}

// decodeName decodes a member name given with its quotes.
func decodeName(raw []byte) (string, error) {
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1]), nil
	}
	var name string
	err := json.Unmarshal(raw, &name)
	return name, err
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue returns the end of the valid JSON value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default: // number, true, false, null
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// skipString returns the end of the string whose opening quote is b[i].
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// get returns the value of the last member called name.
func (d *sessionDoc) get(name string) ([]byte, bool) {
	for i := len(d.members) - 1; i >= 0; i-- {
		if d.members[i].name == name {
			return d.members[i].value, true
		}
	}
	return nil, false
}

// data decodes the session: the seven fields, and every other member but
// this package's own into Values (nil when there are none). The Values
// alias the document's bytes.
func (d *sessionDoc) data() (SessionData, error) {
	var sd SessionData
	for _, m := range d.members {
		var err error
		switch m.name {
		case fieldUserID:
			err = decodeString(m.value, &sd.UserID)
		case fieldEmail:
			err = decodeString(m.value, &sd.Email)
		case fieldRole:
			err = decodeString(m.value, &sd.Role)
		case fieldIP:
			err = decodeString(m.value, &sd.IP)
		case fieldUserAgent:
			err = decodeString(m.value, &sd.UserAgent)
		case fieldCreatedAt:
			err = decodeTime(m.value, &sd.CreatedAt)
		case fieldLastActivity:
			err = decodeTime(m.value, &sd.LastActivity)
		case fieldIdleTimeout, fieldExpiresAt:
		default:
			if sd.Values == nil {
				sd.Values = make(map[string]json.RawMessage, len(d.members)-len(sd.Values))
			}
			sd.Values[m.name] = m.value
		}
		if err != nil {
			return SessionData{}, fmt.Errorf("%s: %w", m.name, err)
		}
	}
	return sd, nil
}

// userID returns the stored userId, or "" when it is missing or not a
// string.
func (d *sessionDoc) userID() string {
	var uid string
	if v, ok := d.get(fieldUserID); ok && decodeString(v, &uid) == nil {
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

// decodeString decodes a JSON string (or null, leaving *dst alone).
func decodeString(v []byte, dst *string) error {
	if len(v) >= 2 && v[0] == '"' && bytes.IndexByte(v, '\\') < 0 && utf8.Valid(v) {
		*dst = string(v[1 : len(v)-1])
		return nil
	}
	return json.Unmarshal(v, dst)
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
			changed[name] = appendString(nil, now)
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
	var added []string
	for name, v := range data.Values {
		if _, ok := old.Values[name]; !ok {
			changed[name] = v
			added = append(added, name)
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return nil, false, nil
	}
	out := make([]byte, 0, 64+len(d.members)*32)
	out = append(out, '{')
	written := map[string]bool{}
	keep := func(members []member) {
		for _, m := range members {
			if removed[m.name] {
				continue
			}
			v := m.value
			if nv, ok := changed[m.name]; ok {
				v = nv
				written[m.name] = true
			}
			out = appendMember(out, m.raw, v)
		}
	}
	// New members go before this package's own members when those come
	// last, where UpdateSessionActivity looks for them first.
	tail := len(d.members)
	for tail > 0 && (d.members[tail-1].name == fieldIdleTimeout || d.members[tail-1].name == fieldExpiresAt) {
		tail--
	}
	keep(d.members[:tail])
	// A seven-field member the stored object lacked, then new Values.
	slices.Sort(added)
	for _, name := range append([]string{fieldUserID, fieldEmail, fieldRole, fieldCreatedAt, fieldLastActivity, fieldIP, fieldUserAgent}, added...) {
		if v, ok := changed[name]; ok && !written[name] {
			out = appendMember(out, appendString(nil, name), v)
			written[name] = true
		}
	}
	keep(d.members[tail:])
	return append(out, '}'), true, nil
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
		out = appendMember(out, appendString(nil, f.name), appendString(nil, f.v))
	}
	for _, f := range []struct {
		name string
		t    time.Time
	}{{fieldCreatedAt, data.CreatedAt}, {fieldLastActivity, data.LastActivity}} {
		v, err := appendTime(nil, f.name, f.t)
		if err != nil {
			return nil, err
		}
		out = appendMember(out, appendString(nil, f.name), v)
	}
	for _, f := range []struct{ name, v string }{{fieldIP, data.IP}, {fieldUserAgent, data.UserAgent}} {
		out = appendMember(out, appendString(nil, f.name), appendString(nil, f.v))
	}
	names := make([]string, 0, len(data.Values))
	for name := range data.Values {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		out = appendMember(out, appendString(nil, name), data.Values[name])
	}
	out = appendMember(out, appendString(nil, fieldIdleTimeout), fmt.Appendf(nil, "%d", idleMS))
	if expiresAtMS > 0 {
		out = appendMember(out, appendString(nil, fieldExpiresAt), fmt.Appendf(nil, "%d", expiresAtMS))
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

// appendMember appends "name":value, with a comma unless it is the first.
func appendMember(out, name, value []byte) []byte {
	if out[len(out)-1] != '{' {
		out = append(out, ',')
	}
	out = append(out, name...)
	out = append(out, ':')
	return append(out, value...)
}

// appendString appends s as a JSON string the way JSON.stringify writes
// it: only quotes, backslashes and control characters escaped ("<", "&"
// and "/" stay as they are). checkSession has refused invalid UTF-8.
func appendString(out []byte, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return append(out, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
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
