// Package devredis gives the examples a Redis to talk to: the one in
// $REDIS_URL, or an embedded miniredis when that is unset.
package devredis

import (
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// Server is the Redis an example talks to.
type Server struct {
	// URL is $REDIS_URL, or the embedded miniredis's redis:// URL.
	URL string

	mr *miniredis.Miniredis // nil for the Redis in $REDIS_URL
}

// Start returns the Redis in $REDIS_URL, or starts an embedded miniredis
// when that is unset. Close stops the miniredis.
func Start() (*Server, error) {
	if url := os.Getenv("REDIS_URL"); url != "" {
		return &Server{URL: url}, nil
	}
	mr, err := miniredis.Run()
	if err != nil {
		return nil, err
	}
	return &Server{URL: "redis://" + mr.Addr(), mr: mr}, nil
}

// Embedded reports whether the server is the embedded miniredis.
func (s *Server) Embedded() bool { return s.mr != nil }

// Elapse lets d pass for the server's key expiry: a real server's clock
// runs, so Elapse waits; miniredis's TTLs move only when told to, so
// Elapse moves them at once.
func (s *Server) Elapse(d time.Duration) {
	if s.mr != nil {
		s.mr.FastForward(d)
		return
	}
	time.Sleep(d)
}

// Close stops the embedded miniredis; it leaves a real server alone.
func (s *Server) Close() {
	if s.mr != nil {
		s.mr.Close()
	}
}

// URL returns $REDIS_URL, or the URL of a new embedded miniredis, which
// stop closes. embedded reports which.
func URL() (url string, embedded bool, stop func(), err error) {
	s, err := Start()
	if err != nil {
		return "", false, nil, err
	}
	return s.URL, s.Embedded(), s.Close, nil
}
