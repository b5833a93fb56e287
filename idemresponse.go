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
	var sr storedResponse
	if !ok || json.Unmarshal([]byte(head), &sr) != nil || sr.Status < 100 || sr.Status > 999 {
		return false
	}
	h := w.Header()
	for k, v := range sr.Header {
		h[k] = v
	}
	h.Set(idemReplayHeader, "true")
	w.WriteHeader(sr.Status)
	_, _ = io.WriteString(w, body)
	return true
}
