package redisservice

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Redis down or stalled in the middle of a session: requests are bounded
// by Timeout and run without a session, the cookie is never cleared or
// replaced, a save that fails answers through the ErrorHandler with
// nothing written, and after recovery the same cookie is the same
// session with all its values.
func TestSessionRedisOutage(t *testing.T) {
	t.Parallel()
	// Persisted, so that a restart brings the data back.
	srv := startRedisServer(t, "--appendonly", "yes", "--appendfsync", "always")
	const timeout = 300 * time.Millisecond
	a := newSessionApp(t, nil, Options{URL: srv.url(), Timeout: timeout}, SessionConfig{InsecureCookie: true})
	id := a.login("u1", "")
	a.put(id, "cart", `["A-1"]`)

	changed, release := make(chan struct{}), make(chan struct{})
	a.mux.HandleFunc("POST /checkout", func(w http.ResponseWriter, r *http.Request) {
		assert.NoError(t, a.m.Put(r.Context(), "cart", []string{}))
		assert.NoError(t, a.m.Put(r.Context(), "order", 1))
		close(changed)
		<-release
		_, err := io.WriteString(w, "order placed")
		assert.Error(t, err, "a write after a failed save")
	})
	done := make(chan *http.Response, 1)
	var body string
	go func() {
		var resp *http.Response
		resp, body = a.do("POST", "/checkout", a.with(id), "")
		done <- resp
	}()
	<-changed
	srv.kill()
	close(release)
	resp := <-done
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode, "a failed save: the ErrorHandler answers")
	assert.NotContains(t, body, "order placed")
	assert.Empty(t, resp.Header.Values("Set-Cookie"))

	// Down: bounded, no session, the cookie left alone.
	for _, req := range []struct{ method, path string }{{"GET", "/me"}, {"GET", "/noop"}, {"POST", "/logout"}, {"POST", "/login/u1"}, {"POST", "/renew"}} {
		within(t, 10*timeout, req.path+" with Redis down", func() {
			resp, body := a.do(req.method, req.path, a.with(id), "")
			assert.Empty(t, resp.Header.Values("Set-Cookie"), "%s with Redis down", req.path)
			switch req.path {
			case "/noop":
				assert.Equal(t, http.StatusOK, resp.StatusCode, "the handler runs without a session")
			case "/renew":
				assert.Contains(t, body, "no session")
			default:
				assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s: %s", req.path, body)
			}
		})
	}

	srv.start()
	recovered := func(what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, body := a.do("GET", "/me", a.with(id), "")
			if resp.StatusCode == http.StatusOK {
				var me meReply
				require.NoError(t, json.Unmarshal([]byte(body), &me))
				assert.Equal(t, id, me.ID, what)
				assert.Equal(t, map[string]json.RawMessage{"cart": json.RawMessage(`["A-1"]`)}, me.Values,
					"%s: all the values, and none of the failed save's", what)
				return
			}
			require.NotEqual(t, http.StatusUnauthorized, resp.StatusCode, "%s: the session was lost", what)
			require.True(t, time.Now().Before(deadline), "%s: never recovered", what)
			time.Sleep(20 * time.Millisecond)
		}
	}
	recovered("after a restart")

	// Stalled: each request waits at most Timeout.
	srv.pause()
	t.Cleanup(srv.resume)
	within(t, 10*timeout, "a request with Redis stalled", func() {
		resp, _ := a.do("GET", "/me", a.with(id), "")
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		assert.Empty(t, resp.Header.Values("Set-Cookie"))
	})
	srv.resume()
	recovered("after a stall")
}

// The session is saved before the response's first byte whichever way
// the handler starts it, and http.ResponseController works through the
// wrapped writer.
func TestSessionSavedBeforeFirstByte(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		var handlerErr error
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true,
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				handlerErr = err
				http.Error(w, "try again", http.StatusTeapot)
			}})
		m := a.m
		saved := func(r *http.Request, what string) {
			t.Helper()
			data, found, err := a.s.GetSession(r.Context(), m.ID(r.Context()))
			if assert.NoError(t, err, what) && assert.True(t, found, what) {
				assert.Equal(t, `"`+what+`"`, string(data.Values["step"]), "%s: saved before the first byte", what)
			}
		}
		a.mux.HandleFunc("POST /flush", func(w http.ResponseWriter, r *http.Request) {
			require.NoError(t, m.Login(r.Context(), SessionData{UserID: "u1"}))
			require.NoError(t, m.Put(r.Context(), "step", "flush"))
			w.(http.Flusher).Flush()
			saved(r, "flush")
			_, _ = io.WriteString(w, "streamed")
		})
		a.mux.HandleFunc("POST /readfrom", func(w http.ResponseWriter, r *http.Request) {
			require.NoError(t, m.Put(r.Context(), "step", "readfrom"))
			_, err := io.Copy(w, io.LimitReader(strings.NewReader("copied"), 100)) // not a WriterTo: w.ReadFrom runs
			assert.NoError(t, err)
			saved(r, "readfrom")
		})
		a.mux.HandleFunc("POST /controller", func(w http.ResponseWriter, r *http.Request) {
			rc := http.NewResponseController(w)
			assert.NoError(t, rc.SetWriteDeadline(time.Now().Add(time.Minute)), "through Unwrap")
			require.NoError(t, m.Put(r.Context(), "step", "controller"))
			assert.NoError(t, rc.Flush())
			saved(r, "controller")
		})
		a.mux.HandleFunc("POST /hints", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", "</app.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			require.NoError(t, m.Put(r.Context(), "step", "hints"), "after an informational status")
			w.WriteHeader(http.StatusCreated)
			saved(r, "hints")
		})
		a.mux.HandleFunc("POST /hijack", func(w http.ResponseWriter, r *http.Request) {
			require.NoError(t, m.Put(r.Context(), "step", "hijack"))
			conn, rw, err := http.NewResponseController(w).Hijack()
			require.NoError(t, err)
			defer conn.Close()
			saved(r, "hijack")
			_, _ = rw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhijacked")
			_ = rw.Flush()
		})
		a.mux.HandleFunc("POST /broken", func(w http.ResponseWriter, r *http.Request) {
			require.NoError(t, m.Put(r.Context(), "step", "broken"))
			// Another writer leaves something that is no session.
			key := b.raw("session:" + m.ID(r.Context()))
			require.NoError(t, b.client.Del(r.Context(), key).Err())
			require.NoError(t, b.client.HSet(r.Context(), key, "f", "v").Err())
			w.(http.Flusher).Flush()
			_, err := io.WriteString(w, "secret")
			assert.Error(t, err)
		})

		resp, body := a.do("POST", "/flush", "", "")
		assert.Equal(t, "streamed", body)
		c := sessionCookie(t, resp, "session")
		require.NotNil(t, c, "Login's cookie, sent with the flushed header")
		id := c.Value
		_, body = a.do("POST", "/readfrom", a.with(id), "")
		assert.Equal(t, "copied", body)
		a.do("POST", "/controller", a.with(id), "")

		var informational []int
		req, err := http.NewRequest("POST", a.srv.URL+"/hints", nil)
		require.NoError(t, err)
		req.Header.Set("Cookie", a.with(id))
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			Got1xxResponse: func(code int, _ textproto.MIMEHeader) error { informational = append(informational, code); return nil },
		}))
		resp, err = a.c.Do(req)
		require.NoError(t, err)
		_ = resp.Body.Close()
		assert.Equal(t, http.StatusCreated, resp.StatusCode)
		assert.Equal(t, []int{http.StatusEarlyHints}, informational)

		resp, body = a.do("POST", "/hijack", a.with(id), "")
		assert.Equal(t, "hijacked", body)
		assert.Equal(t, http.StatusOK, resp.StatusCode)

		resp, body = a.do("POST", "/broken", a.with(id), "")
		assert.Equal(t, http.StatusTeapot, resp.StatusCode, "the ErrorHandler answers a failed save")
		assert.Equal(t, "try again\n", body, "nothing of the handler's response")
		require.Error(t, handlerErr)
		assert.False(t, errors.Is(handlerErr, ErrNoSession))
		assert.Equal(t, map[string]string{"f": "v"}, b.client.HGetAll(ctxT(t), b.raw("session:"+id)).Val(), "nothing written")
	})
}
