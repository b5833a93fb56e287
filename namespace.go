package redisservice

import "strings"

// The Service keeps these namespaces for its own keys (after
// Options.KeyPrefix), and this file alone builds their keys. A caller's
// Set, Delete and the like refuse them (checkWriteKey) unless
// Options.AllowReservedKeys. A feature that stores keys of its own adds
// its prefix here.
const (
	// sessionPrefix starts a session's key, "session:<id>": the key the
	// original service uses.
	sessionPrefix = "session:"

	// userSessionsPrefix starts a user's session index,
	// "user-sessions:<user id>".
	userSessionsPrefix = "user-sessions:"

	// rateLimitPrefix starts CheckRateLimit's fixed-window counter,
	// "ratelimit:<identifier>".
	rateLimitPrefix = "ratelimit:"

	// gcraPrefix starts the name of the hash holding a key's GCRA state, one
	// field per limit. It lies outside "ratelimit:", which belongs to
	// CheckRateLimit's counters, so no identifier can name it.
	gcraPrefix = "gcra:"

	// scsSessionPrefix is scsstore.DefaultPrefix: the scs sessions that
	// module's default store keeps through [Service.Run].
	scsSessionPrefix = "scs:session:"

	// lockPrefix starts the keys of locks and of their fencing counters.
	lockPrefix = "lock:"

	// idemPrefix starts the keys of Idempotency-Key records.
	idemPrefix = "idem:"
)

// sessionDisplayKey stands for a session's key in errors and logs: a
// session id is a bearer secret.
const sessionDisplayKey = sessionPrefix + "<redacted>"

// reservedKey reports whether the caller's key k lies in a namespace the
// Service keeps for its own keys: sessions ("session:<id>", the key the
// original service uses), their per-user index, rate-limit counters, GCRA
// state, the sessions of the scsstore module's default store, locks with
// their fencing counters, and Idempotency-Key records.
func reservedKey(k string) bool {
	for _, p := range [...]string{sessionPrefix, userSessionsPrefix, rateLimitPrefix, gcraPrefix, scsSessionPrefix, lockPrefix, idemPrefix} {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// sessionKey returns the key of session id, without Options.KeyPrefix.
func sessionKey(id string) string { return sessionPrefix + id }

// userSessionsKey returns the key of uid's session index, without
// Options.KeyPrefix; errors and logs name the index by it.
func userSessionsKey(uid string) string { return userSessionsPrefix + uid }

// rateLimitKey returns the key, with Options.KeyPrefix, of
// CheckRateLimit's counter for identifier, in one allocation.
func (s *Service) rateLimitKey(identifier string) string {
	return s.prefix + rateLimitPrefix + identifier
}

// gcraKey returns the key, with Options.KeyPrefix, of the hash holding
// key's GCRA state, in one allocation.
func (s *Service) gcraKey(key string) string {
	return s.prefix + gcraPrefix + key
}
