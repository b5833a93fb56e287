package redisservice

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"time"
)

// sessionWriter is the ResponseWriter a handler under LoadAndSave
// writes to: before the response's first byte it saves the session
// (once) and sets the cookie. When the save fails, the ErrorHandler
// answers instead and the handler's writes fail with the save's error.
type sessionWriter struct {
	http.ResponseWriter
	st      *sessionState
	started bool  // the session was saved, or its save failed
	err     error // the save's failure: the ErrorHandler answered
}

// commit saves the session the first time it is called, and reports
// whether the handler may write.
func (w *sessionWriter) commit() bool {
	if !w.started {
		w.started = true
		if w.err = w.st.save(w.ResponseWriter.Header()); w.err != nil {
			w.st.m.cfg.ErrorHandler(w.ResponseWriter, w.st.req, w.err)
		}
	}
	return w.err == nil
}

// WriteHeader saves the session before a final status; an informational
// one (1xx but 101) goes out before it, without the cookie.
func (w *sessionWriter) WriteHeader(code int) {
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		if w.err == nil {
			w.ResponseWriter.WriteHeader(code)
		}
		return
	}
	if w.commit() {
		w.ResponseWriter.WriteHeader(code)
	}
}

func (w *sessionWriter) Write(b []byte) (int, error) {
	if !w.commit() {
		return 0, w.err
	}
	return w.ResponseWriter.Write(b)
}

// ReadFrom keeps the underlying writer's io.ReaderFrom (sendfile).
func (w *sessionWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.commit() {
		return 0, w.err
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
}

// Flush implements http.Flusher.
func (w *sessionWriter) Flush() { _ = w.FlushError() }

// FlushError is what http.ResponseController's Flush calls.
func (w *sessionWriter) FlushError() error {
	if !w.commit() {
		return w.err
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack saves the session, then hands the connection over; the cookie
// cannot be sent on it.
func (w *sessionWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if !w.commit() {
		return nil, nil, w.err
	}
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *sessionWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// writeCookie sets the response's session cookie on h, if it has one to
// send. Its Max-Age is the whole seconds left before the session's idle
// deadline, rounded down, so that the cookie never outlives the session;
// with less than a second left the cookie is expired.
func (st *sessionState) writeCookie(h http.Header) {
	cfg := &st.m.cfg
	c := http.Cookie{Name: cfg.CookieName, Path: cfg.Path, Domain: cfg.Domain,
		Secure: !cfg.InsecureCookie, HttpOnly: true, SameSite: cfg.SameSite}
	switch st.cookie {
	case cookieSet:
		c.Value = st.id
		if !cfg.BrowserSessionCookie && !st.expires.IsZero() {
			now := st.m.s.opts.Now()
			secs := st.expires.Sub(now) / time.Second
			if secs >= 1 {
				c.MaxAge, c.Expires = int(secs), now.Add(secs*time.Second)
				break
			}
			c.MaxAge, c.Expires = -1, time.Unix(1, 0)
		}
	case cookieExpire:
		c.MaxAge, c.Expires = -1, time.Unix(1, 0)
	default:
		return
	}
	h.Add("Set-Cookie", c.String())
	h.Add("Cache-Control", `no-cache="Set-Cookie"`)
}

// saveSessionChanges merges a request's changes (by name: the JSON to
// store, nil to delete) into session id with UpdateSession's
// check-and-set: names not in changes keep what others wrote, and a
// session destroyed meanwhile stays destroyed (nil). known, when not nil,
// is taken for the stored bytes on the first attempt: one round trip when
// nobody else wrote meanwhile. A failure writes nothing, or, when its
// outcome is unknown, all of it.
func (s *Service) saveSessionChanges(ctx context.Context, id string, known []byte, changes map[string]json.RawMessage) (err error) {
	const op = "savesession"
	ctx, scope := s.tel.Begin(ctx, op, sessionDisplayKey)
	defer scope.End(ctx, &err)
	_, err = s.updateSession(ctx, op, id, known, func(d *SessionData) error {
		for name, v := range changes {
			if v == nil {
				delete(d.Values, name)
			} else {
				d.Values[name] = v
			}
		}
		return nil
	})
	return err
}
