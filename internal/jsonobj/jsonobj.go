// Package jsonobj reads and edits one JSON object member by member,
// keeping each member's bytes as stored: [Parse] splits an object into
// its top-level members, [Object.Edit] writes it back with some members
// changed, dropped or added and every other member untouched byte for
// byte, and [AppendMember] and [AppendString] build a new one. Parse
// refuses objects in which a reader that goes by the stored bytes (a Lua
// script, say) and encoding/json could take a name to mean different
// members: repeated names, names that are not valid UTF-8, and names the
// caller marks as plain written with an escape.
package jsonobj

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"
)

// ErrNotObject says a text is valid JSON but not an object.
var ErrNotObject = errors.New("not a JSON object")

// A Member is one top-level member of a parsed object. Its slices alias
// the parsed text.
type Member struct {
	Name       string // the decoded name
	RawName    []byte // the name as stored, quotes included
	Value      []byte // the value as stored
	Start      int    // where RawName starts in the parsed text
	ValueStart int    // where Value starts in the parsed text
}

// An Object is a JSON object split into its top-level members, in stored
// order. The zero Object is the empty object.
type Object struct {
	Members []Member
}

// Parse splits b, which must be one JSON object, into its members, whose
// bytes alias b. It refuses, with an error, an object in which a member
// name repeats (once decoded), a name that is not valid UTF-8, and a name
// for which plain (when not nil) reports true written with an escape:
// encoding/json takes the last of repeated members and turns invalid
// UTF-8 into U+FFFD, while a reader of the stored bytes sees something
// else; refusing them makes every reader mean the same member. Text that
// is not JSON fails with encoding/json's error, and JSON that is not an
// object with [ErrNotObject].
func Parse(b []byte, plain func(name string) bool) (Object, error) {
	if !json.Valid(b) {
		// Let encoding/json say where and why.
		var v any
		err := json.Unmarshal(b, &v)
		if err == nil {
			err = errors.New("invalid JSON")
		}
		return Object{}, err
	}
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return Object{}, ErrNotObject
	}
	o := Object{Members: make([]Member, 0, 16)}
	var seen map[string]bool // the names so far, once there are many
	i = skipSpace(b, i+1)
	if b[i] == '}' {
		return o, nil
	}
	for {
		// b is valid JSON, so each step finds what the grammar says.
		start, end := i, skipValue(b, i)
		raw := b[i:end]
		var name string
		if err := DecodeString(raw, &name); err != nil {
			return Object{}, err
		}
		if err := o.checkName(name, raw, plain, &seen); err != nil {
			return Object{}, err
		}
		i = skipSpace(b, end)
		i = skipSpace(b, i+1) // ':'
		end = skipValue(b, i)
		o.Members = append(o.Members, Member{Name: name, RawName: raw, Value: b[i:end], Start: start, ValueStart: i})
		i = skipSpace(b, end)
		if b[i] == '}' {
			return o, nil
		}
		i = skipSpace(b, i+1) // ','
	}
}

// checkName refuses the member name (decoded; raw as stored) when it
// cannot follow o's members: see Parse. Repeats are found by comparison
// while there are few members, then with *seen.
func (o *Object) checkName(name string, raw []byte, plain func(string) bool, seen *map[string]bool) error {
	switch {
	case !utf8.Valid(raw):
		return fmt.Errorf("member name %q is not valid UTF-8", raw)
	case plain != nil && bytes.IndexByte(raw, '\\') >= 0 && plain(name):
		return fmt.Errorf("member name %s spells %q with an escape", raw, name)
	}
	const few = 32
	if len(o.Members) < few {
		for _, m := range o.Members {
			if m.Name == name {
				return fmt.Errorf("member name %q repeats", name)
			}
		}
		return nil
	}
	if *seen == nil {
		*seen = make(map[string]bool, 2*few)
		for _, m := range o.Members {
			(*seen)[m.Name] = true
		}
	}
	if (*seen)[name] {
		return fmt.Errorf("member name %q repeats", name)
	}
	(*seen)[name] = true
	return nil
}

// Get returns the value of the last member called name.
func (o *Object) Get(name string) ([]byte, bool) {
	for i := len(o.Members) - 1; i >= 0; i-- {
		if o.Members[i].Name == name {
			return o.Members[i].Value, true
		}
	}
	return nil, false
}

// Changes are the edits [Object.Edit] makes.
type Changes struct {
	// Set holds new values by name, each one valid JSON value.
	Set map[string][]byte

	// Delete names the members to drop. It wins over Set.
	Delete map[string]bool

	// Order is the order in which the names of Set that are no member
	// are added: those listed here first, in this order, then the others
	// sorted.
	Order []string

	// Last, when not nil, reports the names of the members that stay
	// last: new members go before the run of such members that ends the
	// object. Nil puts new members at the very end.
	Last func(name string) bool
}

// Edit returns the object's text with c applied: a member named in Set
// gets its new value, in its place and under its name as stored; one in
// Delete is dropped; every other member keeps its bytes and place. The
// names of Set that are no member become new members (see [Changes]),
// their names written by [AppendString]. Whitespace between members is
// not kept.
func (o *Object) Edit(c Changes) []byte {
	out := make([]byte, 0, 64+len(o.Members)*32)
	out = append(out, '{')
	keep := func(members []Member) {
		for _, m := range members {
			if c.Delete[m.Name] {
				continue
			}
			v := m.Value
			if nv, ok := c.Set[m.Name]; ok {
				v = nv
			}
			out = AppendMember(out, m.RawName, v)
		}
	}
	tail := len(o.Members)
	for c.Last != nil && tail > 0 && c.Last(o.Members[tail-1].Name) {
		tail--
	}
	keep(o.Members[:tail])
	added := make(map[string]bool, len(c.Set))
	add := func(name string) {
		if v, ok := c.Set[name]; ok && !added[name] && !c.Delete[name] && !o.has(name) {
			out = AppendMember(out, AppendString(nil, name), v)
			added[name] = true
		}
	}
	for _, name := range c.Order {
		add(name)
	}
	var rest []string
	for name := range c.Set {
		if !slices.Contains(c.Order, name) {
			rest = append(rest, name)
		}
	}
	slices.Sort(rest)
	for _, name := range rest {
		add(name)
	}
	keep(o.Members[tail:])
	return append(out, '}')
}

// has reports whether o has a member called name.
func (o *Object) has(name string) bool {
	_, ok := o.Get(name)
	return ok
}

// AppendMember appends the member rawName:value, with a comma before it
// unless out ends with the object's opening brace. rawName is the name
// as JSON, quotes included.
func AppendMember(out, rawName, value []byte) []byte {
	if len(out) > 0 && out[len(out)-1] != '{' {
		out = append(out, ',')
	}
	out = append(out, rawName...)
	out = append(out, ':')
	return append(out, value...)
}

// AppendString appends s as a JSON string the way JavaScript's
// JSON.stringify writes it: only quotes, backslashes and control
// characters escaped ("<", "&" and "/" stay as they are). Invalid UTF-8
// becomes U+FFFD: check s first where that matters.
func AppendString(out []byte, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return append(out, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
}

// DecodeString decodes the JSON string v into *dst; null leaves *dst
// alone. A string without escapes, of valid UTF-8, costs one copy.
func DecodeString(v []byte, dst *string) error {
	if len(v) >= 2 && v[0] == '"' && bytes.IndexByte(v, '\\') < 0 && utf8.Valid(v) {
		*dst = string(v[1 : len(v)-1])
		return nil
	}
	return json.Unmarshal(v, dst)
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
