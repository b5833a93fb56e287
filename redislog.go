package redisservice

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"time"
)

// RedisLogger routes go-redis's own log lines into a [*slog.Logger]. By
// default go-redis prints them to stderr, outside the application's logs
// and without a bound: a pool that cannot dial prints a line per attempt,
// dozens a second during an outage. Install one for the whole process,
// once, before making clients:
//
//	redis.SetLogger(redisservice.SlogLogger(logger))
//
// Use [SlogLogger] to make one; it is safe for concurrent use.
type RedisLogger struct {
	log  *slog.Logger // nil: slog.Default() at the time of each line
	gate logGate
}

// SlogLogger returns a go-redis logger (for redis.SetLogger) that writes
// each line to l, or to slog.Default() when l is nil, at level Warn, with
// the attribute logger=go-redis. Like the Service's own logs it lets at
// most one line a second through per kind of line (per format string of
// go-redis); the lines held back are counted in the next one's
// "suppressed" attribute. The user-info of any URL in a line
// ("redis://user:password@host") is replaced by "xxxxx", up to the line's
// last '@' whatever the password holds ('@', '/', spaces).
//
// go-redis has one logger per process: the last redis.SetLogger wins, for
// every client.
func SlogLogger(l *slog.Logger) *RedisLogger { return &RedisLogger{log: l} }

// urlUserInfo matches the scheme and user-info of a URL. A password may
// hold any character, '@', '/' and spaces included, so the user-info runs
// to the last '@' of the line: more than the user-info when the line has
// another '@' after the URL, which masks too much rather than too little.
var urlUserInfo = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)(?s:.*)@`)

// Printf logs one line of go-redis, formatted as [fmt.Sprintf] does. It
// implements go-redis's logging interface.
func (r *RedisLogger) Printf(ctx context.Context, format string, v ...any) {
	allowed, suppressed := r.gate.allow(format, time.Now().UnixNano())
	if !allowed {
		return
	}
	l := r.log
	if l == nil {
		l = slog.Default()
	}
	if ctx == nil {
		ctx = context.Background()
	}
	msg := urlUserInfo.ReplaceAllString(fmt.Sprintf(format, v...), "${1}xxxxx@")
	l.LogAttrs(ctx, slog.LevelWarn, msg,
		slog.String("logger", "go-redis"),
		slog.Uint64("suppressed", suppressed))
}
