package redisservice

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"
)

// errMalformedUserinfo is the reason New gives for a URL that does not
// parse because of its user name or password, which it never shows.
const errMalformedUserinfo = "malformed user name or password (escape ? # / @ : % in it as %XX, e.g. with url.UserPassword)"

// parseURL parses a redis:// or rediss:// URL. Its errors never contain
// any part of the URL's user name or password: they show the URL with
// everything between the scheme and its last @ replaced (see redactURL),
// and only errors found by parsing that redacted form, since parse errors
// quote pieces of their input. A URL that fails only because of its user
// name or password gets errMalformedUserinfo. So does one that parses but
// has an @ after its host (a password with an unescaped ? or #, say), which
// would otherwise send part of the password to the dialler as a host name.
func parseURL(raw string) (*redis.Options, error) {
	ro, err := parseURLAsIs(raw)
	if err == nil {
		return ro, nil
	}
	shown := redactURL(raw)
	if _, serr := parseURLAsIs(shown); serr != nil {
		return nil, fmt.Errorf("%w: URL %s: %w", ErrInvalidArgument, shown, serr)
	}
	return nil, fmt.Errorf("%w: URL %s: %s", ErrInvalidArgument, shown, errMalformedUserinfo)
}

// parseURLAsIs parses raw; its errors may quote raw.
func parseURLAsIs(raw string) (*redis.Options, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without the whole URL
		}
		return nil, err
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("scheme %q is not redis or rediss", u.Scheme)
	}
	if at := strings.LastIndex(raw, "@"); at >= 0 && (u.User == nil || at >= authorityEnd(raw)) {
		return nil, errors.New(errMalformedUserinfo)
	}
	return redis.ParseURL(raw)
}

// authorityEnd returns the index in raw of the first /, ? or # after
// "scheme://", or len(raw).
func authorityEnd(raw string) int {
	start := 0
	if i := schemeEnd(raw); i > 0 {
		start = i
	}
	if i := strings.IndexAny(raw[start:], "/?#"); i >= 0 {
		return start + i
	}
	return len(raw)
}

// schemeEnd returns the index just past "scheme://" when raw starts with a
// well-formed scheme (a letter, then letters, digits, + - or .) followed
// by "://", and 0 otherwise: a "://" inside a password is no scheme.
func schemeEnd(raw string) int {
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		case i > 0 && strings.HasPrefix(raw[i:], "://"):
			return i + 3
		default:
			return 0
		}
	}
	return 0
}

// redactURL returns raw with everything between its scheme and its last
// "@" replaced by "xxxxx", by position, so that no part of a user name or
// password survives, whatever characters it holds and however malformed
// the URL is. Without an @ there is no user information to hide.
func redactURL(raw string) string {
	at := strings.LastIndex(raw, "@")
	if at < 0 {
		return raw
	}
	scheme := raw[:schemeEnd(raw)]
	return scheme + "xxxxx@" + raw[at+1:]
}
