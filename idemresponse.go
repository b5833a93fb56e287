package redisservice

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// captureWriter passes a response through and keeps a copy of it.
type captureWriter struct {
	http.ResponseWriter
	code   int         // 0 until WriteHeader
	header http.Header // the headers as they were sent
	body   bytes.Buffer
}

func (c *captureWriter) WriteHeader(code int) {
	if c.code == 0 && code >= 200 {
		c.code = code
		c.header = c.ResponseWriter.Header().Clone()
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *captureWriter) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.WriteHeader(http.StatusOK)
	}
	c.body.Write(b)
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
func (c *captureWriter) encode() string {
	header := c.header
	if header == nil {
		header = c.ResponseWriter.Header().Clone()
	}
	for _, h := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding",
		"Upgrade", "Te", "Trailer", "Proxy-Authenticate", "Proxy-Authorization", "Set-Cookie"} {
		header.Del(h)
	}
	head, _ := json.Marshal(storedResponse{Status: c.status(), Header: header})
	return string(head) + "\n" + c.body.String()
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
