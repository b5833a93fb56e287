package telemetry

import (
	"strings"

	"github.com/redis/go-redis/v9"
)

// Prefix starts the text of the errors that the calls return.
const Prefix = "redisservice: "

// describe is a span's status description: see Describe.
func (t *Telemetry) describe(err error) string {
	return Describe(err, t.cfg.TraceKeys, t.cfg.Unkeyed)
}

// Describe is err's text for a span or a log line: as it is when keys are
// traced, else [Redact]ed.
func Describe(err error, traceKeys bool, unkeyed func(error) (error, bool)) string {
	if traceKeys {
		return err.Error()
	}
	return Redact(err, unkeyed)
}

// Redact is err's text without the keys that the errors of calls carry
// and without the text of Redis's error replies, which can quote the
// command's arguments. unkeyed (may be nil) returns the cause of an error
// that names a key (it must be one of the caller's, not one it wraps);
// each such error is reduced to its cause without Prefix, and each Redis
// error reply to its code ("WRONGTYPE", "ERR"). The errors of several
// calls joined, or wrapped with fmt.Errorf, lose each call's key too.
func Redact(err error, unkeyed func(error) (error, bool)) string {
	if unkeyed != nil {
		if cause, ok := unkeyed(err); ok {
			return strings.TrimPrefix(Redact(cause, unkeyed), Prefix)
		}
	}
	if _, ok := err.(redis.Error); ok { //nolint:errorlint // the reply itself
		return ReplyCode(err.Error())
	}
	msg := err.Error()
	var causes []error
	switch u := err.(type) { //nolint:errorlint // the wrapping, level by level
	case interface{ Unwrap() error }:
		causes = []error{u.Unwrap()}
	case interface{ Unwrap() []error }:
		causes = u.Unwrap()
	}
	for _, c := range causes {
		if c == nil {
			continue
		}
		if full, short := c.Error(), Redact(c, unkeyed); full != short {
			if !strings.Contains(msg, full) {
				// err quotes c without the package prefix.
				full, short = strings.TrimPrefix(full, Prefix), strings.TrimPrefix(short, Prefix)
			}
			msg = strings.Replace(msg, full, short, 1)
		}
	}
	return msg
}

// ReplyCode is the code that starts a Redis error reply ("WRONGTYPE
// Operation against…"), or "redis error" when the reply starts otherwise
// (a script's own error_reply may start with anything).
func ReplyCode(reply string) string {
	code, _, _ := strings.Cut(reply, " ")
	for i := 0; i < len(code); i++ {
		if c := code[i]; (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return "redis error"
		}
	}
	if code == "" {
		return "redis error"
	}
	return code
}
