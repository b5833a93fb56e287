package redisservice

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNewURLPasswordWithReservedCharacters: a password holding an
// unescaped ? # / or @ is malformed URL syntax; New refuses it, and no
// part of the password reaches the error.
func TestNewURLPasswordWithReservedCharacters(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		"redis://user:hunter2?x@127.0.0.1:6379",
		"redis://:hunter2#frag@127.0.0.1:6379",
		"redis://user:6379#abcd@cache.internal", // would parse as host "user", port 6379
		"redis://user:hunt/er2@127.0.0.1:6379/0",
		"rediss://user:hun@ter2?@127.0.0.1:6379",
		"redis://user:hunter2%zz@127.0.0.1:6379",
	} {
		_, err := New(Options{URL: raw, Logger: slog.New(slog.DiscardHandler)})
		require.ErrorIs(t, err, ErrInvalidArgument, "New(%q)", raw)
		for _, leak := range []string{"hunter2", "hunt", "unter", "er2", "6379#", "abcd", "frag", "%zz"} {
			assert.NotContains(t, err.Error(), leak, "New(%q)", raw)
		}
	}
}

// FuzzNewURLRedaction builds a URL from a user name, a password and a
// host part (which holds no @, so the password lies between the scheme and
// the URL's last @), and checks New's error: no substring of the password
// of 4 bytes or more appears in it unless it is public, that is part of
// the URL without the password, or of the error New gives for the same
// URL with an empty password, or of the fixed text of New's errors.
func FuzzNewURLRedaction(f *testing.F) {
	f.Add("user", "hunter2?x", "127.0.0.1:6379")
	f.Add("", "hunter2#x", "127.0.0.1:6379/0")
	f.Add("user", "6379#abcd", "cache.internal")
	f.Add("app", "s3c@ret:pw/x?y#z%41", "host:port")
	f.Add("a:b", "%zzpass", "host/notanumber")
	f.Add("", "pass\x7fword", "[::1]:7001")
	f.Add("u", "p@ss", "h:1?dial_timeout")
	f.Fuzz(func(t *testing.T, user, password, host string) {
		// The host part holds no @, and no query values: those tune the
		// client (min_idle_conns makes New's client dial in the background),
		// which is not what this checks.
		if strings.ContainsAny(host, "@=") || len(password) > 64 {
			t.Skip()
		}
		quiet := slog.New(slog.DiscardHandler)
		raw := "redis://" + user + ":" + password + "@" + host
		s, err := New(Options{URL: raw, Logger: quiet})
		if err == nil {
			s.Close()
			return
		}
		require.ErrorIs(t, err, ErrInvalidArgument, "New(%q)", raw)
		public := "redis://" + user + ":@" + host + "\n" + errMalformedUserinfo + "\n" + ErrInvalidArgument.Error()
		if s, err := New(Options{URL: "redis://" + user + ":@" + host, Logger: quiet}); err != nil {
			public += "\n" + err.Error()
		} else {
			s.Close()
		}
		msg := err.Error()
		for i := range len(password) {
			for j := i + 4; j <= len(password); j++ {
				q := password[i:j]
				require.False(t, strings.Contains(msg, q) && !strings.Contains(public, q),
					"New(%q) error %q holds %q of the password", raw, msg, q)
			}
		}
	})
}
