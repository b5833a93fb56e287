package redisservice

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// captureWriter passes a response through and keeps a copy of it in its
// stored form: its head, a newline, its body.
type captureWriter struct {
	http.ResponseWriter
	code int             // 0 until WriteHeader
	out  strings.Builder // the stored form, from WriteHeader on
}

func (c *captureWriter) WriteHeader(code int) {
	if c.code == 0 && code >= 200 {
		c.code = code
		// The headers as they are sent: later changes are not sent.
		writeHead(&c.out, code, c.ResponseWriter.Header())
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *captureWriter) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.WriteHeader(http.StatusOK)
	}
	c.out.Write(b)
	return c.ResponseWriter.Write(b)
}

// Unwrap lets [http.ResponseController] reach the connection's writer.
func (c *captureWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// status is the response's status: 200 when the handler wrote nothing.
func (c *captureWriter) status() int {
	if c.code == 0 {
		return http.StatusOK
	}
	return c.code
}

// storedResponse is the head of a stored response; the body follows it
// after a newline (JSON holds none unescaped).
type storedResponse struct {
	Status int         `json:"s"`
	Header http.Header `json:"h,omitempty"`
}

// encode returns the response as stored: its head, a newline, its body.
// Call it once the handler has returned.
func (c *captureWriter) encode() string {
	if c.code == 0 {
		c.code = http.StatusOK
		writeHead(&c.out, c.code, c.ResponseWriter.Header())
	}
	return c.out.String()
}

// notKept reports whether header k is one a stored response leaves out:
// the hop-by-hop ones and Set-Cookie.
func notKept(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding",
		"Upgrade", "Te", "Trailer", "Proxy-Authenticate", "Proxy-Authorization", "Set-Cookie":
		return true
	}
	return false
}

// writeHead writes a stored response's head and its newline to b: the
// JSON of storedResponse{status, h without the headers notKept}, exactly
// as encoding/json writes it (keys sorted, HTML escaped), without its
// reflection and without copying h.
func writeHead(b *strings.Builder, status int, h http.Header) {
	var small [16]string // most responses have fewer headers
	keys := small[:0]
	size := 16
	for k, v := range h {
		if !notKept(k) {
			keys = append(keys, k)
			size += len(k) + 8
			for _, s := range v {
				size += len(s) + 3
			}
		}
	}
	b.Grow(size + 512) // and a small body
	var num [20]byte
	b.WriteString(`{"s":`)
	b.Write(strconv.AppendInt(num[:0], int64(status), 10))
	if len(keys) > 0 {
		slices.Sort(keys)
		b.WriteString(`,"h":{`)
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(b, k)
			b.WriteByte(':')
			v := h[k]
			if v == nil {
				b.WriteString("null")
				continue
			}
			b.WriteByte('[')
			for j, s := range v {
				if j > 0 {
					b.WriteByte(',')
				}
				writeJSONString(b, s)
			}
			b.WriteByte(']')
		}
		b.WriteByte('}')
	}
	b.WriteString("}\n")
}

// writeJSONString writes s as encoding/json does: as it is between quotes
// when it needs no escaping (printable ASCII but for the quote, the
// backslash and <, > and &), else through encoding/json.
func writeJSONString(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			b.Write(q)
			return
		}
	}
	b.WriteByte('"')
	b.WriteString(s)
	b.WriteByte('"')
}

// replay writes a stored response, and reports whether it decoded.
func replay(w http.ResponseWriter, stored string) bool {
	head, body, ok := strings.Cut(stored, "\n")
	if !ok {
		return false
	}
	h := w.Header()
	status, n, ok := scanHead(head, nil, nil)
	if ok && status >= 100 && status <= 999 {
		// One backing array for every value; each header's slice is
		// capped so that appending to one never writes into the next.
		scanHead(head, h, make([]string, 0, n))
	} else {
		var sr storedResponse
		if json.Unmarshal([]byte(head), &sr) != nil || sr.Status < 100 || sr.Status > 999 {
			return false
		}
		status = sr.Status
		for k, v := range sr.Header {
			h[k] = v
		}
	}
	h.Set(idemReplayHeader, "true")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
	return true
}

// scanHead reads a stored head written in writeHead's plain form (no
// escapes, no spaces), without encoding/json: it returns the status and
// the number of header values, or false for any other form, which
// encoding/json then reads. With h, it also sets the headers in h, with
// values appended to vals (which must have room for them).
func scanHead(head string, h http.Header, vals []string) (status, n int, ok bool) {
	p := headScanner{s: head}
	if !p.lit(`{"s":`) {
		return 0, 0, false
	}
	if status, ok = p.status(); !ok {
		return 0, 0, false
	}
	if p.lit(`}`) {
		return status, 0, p.i == len(p.s)
	}
	if !p.lit(`,"h":{`) {
		return 0, 0, false
	}
	for first := true; !p.lit(`}`); first = false {
		if !first && !p.lit(`,`) {
			return 0, 0, false
		}
		k, ok := p.str()
		if !ok || !p.lit(`:`) {
			return 0, 0, false
		}
		if p.lit(`null`) {
			if h != nil {
				h[k] = nil
			}
			continue
		}
		if !p.lit(`[`) {
			return 0, 0, false
		}
		from := len(vals)
		for j := 0; !p.lit(`]`); j++ {
			if j > 0 && !p.lit(`,`) {
				return 0, 0, false
			}
			v, ok := p.str()
			if !ok {
				return 0, 0, false
			}
			n++
			if h != nil {
				vals = append(vals, v)
			}
		}
		if h != nil {
			h[k] = vals[from:len(vals):len(vals)]
		}
	}
	return status, n, p.lit(`}`) && p.i == len(p.s)
}

// headScanner reads a stored head from left to right.
type headScanner struct {
	s string
	i int // the next byte to read
}

// lit reads lit if it is next.
func (p *headScanner) lit(lit string) bool {
	if !strings.HasPrefix(p.s[p.i:], lit) {
		return false
	}
	p.i += len(lit)
	return true
}

// status reads a status: one to three digits, the first not 0.
func (p *headScanner) status() (int, bool) {
	v, j := 0, p.i
	for ; j < len(p.s) && j-p.i < 3 && p.s[j] >= '0' && p.s[j] <= '9'; j++ {
		v = v*10 + int(p.s[j]-'0')
	}
	if j == p.i || p.s[p.i] == '0' {
		return 0, false
	}
	p.i = j
	return v, true
}

// str reads a JSON string of printable ASCII without escapes.
func (p *headScanner) str() (string, bool) {
	if !p.lit(`"`) {
		return "", false
	}
	for j := p.i; j < len(p.s); j++ {
		switch c := p.s[j]; {
		case c == '"':
			v := p.s[p.i:j]
			p.i = j + 1
			return v, true
		case c < 0x20 || c > 0x7e || c == '\\':
			return "", false
		}
	}
	return "", false
}
