package jsonobj

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// plainNames is a plain predicate: the names a reader finds by their
// stored bytes.
func plainNames(name string) bool { return name == "userId" || name == "lastActivity" }

// names returns the decoded names of o's members, in order.
func names(o Object) []string {
	out := make([]string, len(o.Members))
	for i, m := range o.Members {
		out[i] = m.Name
	}
	return out
}

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
		want     []Member // Name, RawName, Value, Start, ValueStart
	}{
		{"empty", `{}`, []Member{}},
		{"empty with space", " \t{ \n} ", []Member{}},
		{"one", `{"a":1}`, []Member{{"a", []byte(`"a"`), []byte(`1`), 1, 5}}},
		{"spaces kept out of members", ` { "a" : "x" , "b":null } `, []Member{
			{"a", []byte(`"a"`), []byte(`"x"`), 3, 9},
			{"b", []byte(`"b"`), []byte(`null`), 15, 19},
		}},
		{"nested values whole", `{"a":[1,{"b":"}"}],"c\"":{"d":[]},"e":-1.5e3,"f":true}`, []Member{
			{"a", []byte(`"a"`), []byte(`[1,{"b":"}"}]`), 1, 5},
			{`c"`, []byte(`"c\""`), []byte(`{"d":[]}`), 19, 25},
			{"e", []byte(`"e"`), []byte(`-1.5e3`), 34, 38},
			{"f", []byte(`"f"`), []byte(`true`), 45, 49},
		}},
		{"escaped name decoded", `{"caf\u00e9":1,"\u0075serX":2}`, []Member{
			{"café", []byte(`"caf\u00e9"`), []byte(`1`), 1, 13},
			{"userX", []byte(`"\u0075serX"`), []byte(`2`), 15, 28},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o, err := Parse([]byte(tt.in), plainNames)
			require.NoError(t, err)
			require.Equal(t, tt.want, o.Members, "Parse(%q)", tt.in)
			for _, m := range o.Members {
				assert.Equal(t, string(m.RawName), tt.in[m.Start:m.Start+len(m.RawName)], "RawName of %q at Start", m.Name)
				assert.Equal(t, string(m.Value), tt.in[m.ValueStart:m.ValueStart+len(m.Value)], "Value of %q at ValueStart", m.Name)
			}
		})
	}
}

func TestParseRefuses(t *testing.T) {
	t.Parallel()
	many := func(last string) string {
		var b strings.Builder
		b.WriteString("{")
		for i := range 40 {
			fmt.Fprintf(&b, `"k%d":%d,`, i, i)
		}
		b.WriteString(last + "}")
		return b.String()
	}
	tests := []struct {
		name, in, want string // want: in the error's text
	}{
		{"not JSON", `{"a":`, "unexpected end of JSON input"},
		{"trailing text", `{} x`, "invalid character"},
		{"empty", ``, "unexpected end of JSON input"},
		{"array", `["a"]`, "not a JSON object"},
		{"null", `null`, "not a JSON object"},
		{"string", `"{}"`, "not a JSON object"},
		{"repeated name", `{"a":1,"b":2,"a":3}`, `member name "a" repeats`},
		{"repeated after decoding", `{"caf\u00e9":1,"café":2}`, `member name "café" repeats`},
		{"repeated among many", many(`"k7":0`), `member name "k7" repeats`},
		{"repeated after decoding among many", many(`"k\u0037":0`), `member name "k7" repeats`},
		{"invalid UTF-8 name", "{\"a\xff\":1}", "is not valid UTF-8"},
		{"names that are one once replaced", "{\"a\xff\":1,\"a\xfe\":2}", "is not valid UTF-8"},
		{"plain name escaped", `{"\u0075serId":"u"}`, `spells "userId" with an escape`},
		{"plain name with an escaped letter", `{"last\u0041ctivity":1}`, `spells "lastActivity" with an escape`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o, err := Parse([]byte(tt.in), plainNames)
			require.Error(t, err, "Parse(%q) = %v", tt.in, names(o))
			assert.Contains(t, err.Error(), tt.want, "Parse(%q)", tt.in)
			assert.Empty(t, o.Members, "Parse(%q) members on error", tt.in)
		})
	}
	_, err := Parse([]byte(`[]`), nil)
	assert.ErrorIs(t, err, ErrNotObject)
}

func TestParseWithoutPlainNames(t *testing.T) {
	t.Parallel()
	// Without plain, an escaped name is only refused when it repeats.
	o, err := Parse([]byte(`{"\u0075serId":"u","b":2}`), nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"userId", "b"}, names(o))
	_, err = Parse([]byte(`{"\u0075serId":"u","userId":2}`), nil)
	assert.ErrorContains(t, err, `member name "userId" repeats`)
	// A name that is not plain may be escaped.
	o, err = Parse([]byte(`{"\u0061":1}`), plainNames)
	require.NoError(t, err)
	assert.Equal(t, []string{"a"}, names(o))
}

func TestGet(t *testing.T) {
	t.Parallel()
	o, err := Parse([]byte(`{"a":1,"b":"x"}`), nil)
	require.NoError(t, err)
	v, ok := o.Get("b")
	assert.True(t, ok)
	assert.Equal(t, `"x"`, string(v))
	_, ok = o.Get("c")
	assert.False(t, ok)
	var zero Object
	_, ok = zero.Get("a")
	assert.False(t, ok, "Get on the zero Object")
	assert.Equal(t, "{}", string(zero.Edit(Changes{})), "the zero Object is the empty object")
}

func TestEdit(t *testing.T) {
	t.Parallel()
	last := func(name string) bool { return name == "idle" || name == "end" }
	tests := []struct {
		name, in string
		c        Changes
		want     string
	}{
		{"nothing", ` { "a" : 1 , "b":[ 2 ] } `, Changes{}, `{"a":1,"b":[ 2 ]}`},
		{"set in place keeps the stored name", `{"caf\u00e9":1,"b":2}`, Changes{Set: map[string][]byte{"café": []byte(`3`)}}, `{"caf\u00e9":3,"b":2}`},
		{"delete", `{"a":1,"b":2,"c":3}`, Changes{Delete: map[string]bool{"b": true}}, `{"a":1,"c":3}`},
		{"delete the first", `{"a":1,"b":2}`, Changes{Delete: map[string]bool{"a": true}}, `{"b":2}`},
		{"delete wins over set", `{"a":1,"b":2}`, Changes{Set: map[string][]byte{"a": []byte(`5`), "z": []byte(`6`)}, Delete: map[string]bool{"a": true, "z": true}}, `{"b":2}`},
		{"new members: Order, then sorted", `{"a":1}`, Changes{
			Set:   map[string][]byte{"z": []byte(`1`), "m": []byte(`2`), "y": []byte(`3`), "a": []byte(`4`), "b": []byte(`5`)},
			Order: []string{"y", "b", "y"},
		}, `{"a":4,"y":3,"b":5,"m":2,"z":1}`},
		{"Order names not set are skipped", `{"a":1}`, Changes{Set: map[string][]byte{"b": []byte(`2`)}, Order: []string{"x", "a"}}, `{"a":1,"b":2}`},
		{"new members before the last run", `{"a":1,"idle":5,"end":6}`, Changes{Set: map[string][]byte{"b": []byte(`2`), "idle": []byte(`7`)}, Last: last}, `{"a":1,"b":2,"idle":7,"end":6}`},
		{"a last member elsewhere stays", `{"idle":5,"a":1}`, Changes{Set: map[string][]byte{"b": []byte(`2`)}, Last: last}, `{"idle":5,"a":1,"b":2}`},
		{"only last members", `{"end":6}`, Changes{Set: map[string][]byte{"b": []byte(`2`)}, Last: last}, `{"b":2,"end":6}`},
		{"Last nil: at the very end", `{"a":1,"idle":5}`, Changes{Set: map[string][]byte{"b": []byte(`2`)}}, `{"a":1,"idle":5,"b":2}`},
		{"into the empty object", `{}`, Changes{Set: map[string][]byte{"a<&/\"": []byte(`{}`)}}, `{"a<&/\"":{}}`},
		{"delete all", `{"a":1}`, Changes{Delete: map[string]bool{"a": true}}, `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o, err := Parse([]byte(tt.in), nil)
			require.NoError(t, err)
			got := o.Edit(tt.c)
			assert.Equal(t, tt.want, string(got), "Edit(%q)", tt.in)
			assert.True(t, json.Valid(got), "Edit(%q) = %s: not JSON", tt.in, got)
		})
	}
}

func TestAppendMember(t *testing.T) {
	t.Parallel()
	out := AppendMember([]byte("{"), []byte(`"a"`), []byte(`1`))
	out = AppendMember(out, []byte(`"b"`), []byte(`[]`))
	assert.Equal(t, `{"a":1,"b":[]`, string(out))
	assert.Equal(t, `"a":1`, string(AppendMember(nil, []byte(`"a"`), []byte(`1`))), "into nothing: no comma")
}

func TestAppendString(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", `""`},
		{"plain", `"plain"`},
		{`<&/>`, `"<&/>"`}, // JSON.stringify leaves these alone
		{"q\"b\\", `"q\"b\\"`},
		{"\n\t\x00\x1f", `"\n\t\u0000\u001f"`},
		{"café ✓", `"café ✓"`},
		{"\u2028", `"\u2028"`},
	}
	for _, tt := range tests {
		got := AppendString([]byte("x"), tt.in)
		assert.Equal(t, "x"+tt.want, string(got), "AppendString(%q)", tt.in)
		var back string
		require.NoError(t, json.Unmarshal(got[1:], &back))
		assert.Equal(t, tt.in, back, "AppendString(%q) read back", tt.in)
	}
}

func TestDecodeString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
		ok       bool
	}{
		{`"abc"`, "abc", true},
		{`""`, "", true},
		{`"a\"b\u00e9"`, `a"bé`, true},
		{`null`, "kept", true},
		{`1`, "", false},
		{`{}`, "", false},
		{"\"a\xff\"", "a\ufffd", true}, // encoding/json's replacement
	}
	for _, tt := range tests {
		got := "kept"
		err := DecodeString([]byte(tt.in), &got)
		if !tt.ok {
			var te *json.UnmarshalTypeError
			assert.True(t, errors.As(err, &te), "DecodeString(%q) = %v; want a type error", tt.in, err)
			continue
		}
		require.NoError(t, err, "DecodeString(%q)", tt.in)
		assert.Equal(t, tt.want, got, "DecodeString(%q)", tt.in)
	}
}

// FuzzParse checks Parse against encoding/json: what it accepts,
// encoding/json reads as an object with the same members, in order, with
// the same values; the members, joined again, are the object itself (up
// to whitespace); the offsets point at the members' bytes; and an Edit
// without changes writes the object back.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"a":1}`, ` { "a" : [ 1 , {"b":"}"} ] , "c\"":null } `, `{"caf\u00e9":1,"café":2}`,
		`{"userId":"u","\u0075serId":"v"}`, `{"a":{"a":1},"b":"a"}`, `[]`, `null`, `{`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		o, err := Parse(raw, plainNames)
		if err != nil {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		tok, err := dec.Token()
		require.NoError(t, err, "Parse accepted what encoding/json refuses: %s", raw)
		require.Equal(t, json.Delim('{'), tok, "Parse accepted a non-object: %s", raw)
		for i := 0; dec.More(); i++ {
			require.Less(t, i, len(o.Members), "members of %s", raw)
			m := o.Members[i]
			tok, err := dec.Token()
			require.NoError(t, err)
			assert.Equal(t, tok, m.Name, "name of member %d of %s", i, raw)
			var v json.RawMessage
			require.NoError(t, dec.Decode(&v))
			assert.Equal(t, string(v), string(m.Value), "value of member %d of %s", i, raw)
			assert.Equal(t, string(m.RawName), string(raw[m.Start:m.Start+len(m.RawName)]), "RawName at Start")
			assert.Equal(t, string(m.Value), string(raw[m.ValueStart:m.ValueStart+len(m.Value)]), "Value at ValueStart")
			if plainNames(m.Name) {
				assert.NotContains(t, string(m.RawName), `\`, "a plain name escaped in %s", raw)
			}
		}
		var asMap map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(raw, &asMap))
		require.Len(t, asMap, len(o.Members), "distinct names of %s", raw)
		out := []byte{'{'}
		for _, m := range o.Members {
			out = AppendMember(out, m.RawName, m.Value)
		}
		out = append(out, '}')
		var compact, compactOut bytes.Buffer
		require.NoError(t, json.Compact(&compact, raw))
		require.NoError(t, json.Compact(&compactOut, out))
		require.Equal(t, compact.String(), compactOut.String(), "members of %s joined again", raw)
		assert.Equal(t, string(out), string(o.Edit(Changes{})), "Edit without changes of %s", raw)
	})
}
