package redisservice

import (
	"errors"
	"strconv"
	"strings"

	"github.com/vevurn/redisservice/internal/flight"
)

// Sentinel errors. Test for them with [errors.Is]: the errors returned by
// [Service] methods wrap them together with the operation and key.
var (
	// ErrInvalidKey reports an empty key, identifier, pattern or session
	// id, a session id that is too long or holds characters outside the
	// URL-unreserved set, or a key or pattern that a write or delete may
	// not touch: one in the namespaces the Service keeps for its own keys
	// ("session:", "user-sessions:", "ratelimit:", "gcra:",
	// "scs:session:", "lock:", "idem:"), unless [Options.AllowReservedKeys].
	// Nothing is written.
	ErrInvalidKey = errors.New("redisservice: invalid key")

	// ErrInvalidTTL reports a negative TTL, a positive TTL below one
	// millisecond, or a zero TTL where one is required. Nothing is written.
	ErrInvalidTTL = errors.New("redisservice: invalid ttl")

	// ErrInvalidArgument reports a malformed argument other than a key or a
	// TTL: NX together with XX, a limit or window <= 0, a nil destination.
	ErrInvalidArgument = errors.New("redisservice: invalid argument")

	// ErrFlushDisabled is returned by [Service.FlushAll] unless
	// [Options.AllowFlushAll] is set.
	ErrFlushDisabled = errors.New("redisservice: flushall disabled")

	// ErrClosed is returned by every call made after [Service.Close].
	ErrClosed = errors.New("redisservice: service closed")

	// ErrUnavailable is returned, with the call's fallback, by every call
	// that did not try Redis because an earlier call found it unreachable
	// and no background PING has seen it answer since (see
	// [Service.IsConnected]). Calls fail fast like this only on a single
	// node, not on Redis Cluster. [Cache] returns the loader's value with
	// it.
	ErrUnavailable = errors.New("redisservice: redis unavailable")

	// ErrConflict is returned by [Service.UpdateSession] and
	// [Service.RenewSessionID] when every attempt found the session
	// changed by another writer between reading and writing it. Nothing
	// was written; the session is as the other writers left it.
	ErrConflict = errors.New("redisservice: session changed concurrently")

	// ErrNotFound is what a [Cache] loader returns (wrapped or not) when
	// there is nothing to cache. With [NotFoundTTL], Cache remembers it
	// and later calls return an error matching it without loading.
	ErrNotFound = errors.New("redisservice: not found")

	// ErrLoad wraps every error a [Cache] loader returned, a loader's
	// panic and its runtime.Goexit: errors.Is finds both ErrLoad and the
	// loader's own error. Any other error from Cache comes with a usable
	// value (the loader's, or a stored copy), except invalid arguments,
	// the caller's own ctx ending, and a remembered [ErrNotFound].
	ErrLoad = errors.New("redisservice: load failed")

	// ErrNoSession is returned by the [SessionManager] calls that need
	// the request's session (Put, RenewID) when it has none: no cookie,
	// an unknown or ended session, one that could not be loaded, or one
	// logged out. A session begins with [SessionManager.Login].
	ErrNoSession = errors.New("redisservice: no session")

	// ErrDecode reports a stored value that does not decode into the
	// destination (bad JSON or a type mismatch). The wrapped error says why.
	ErrDecode = errors.New("redisservice: stored value does not decode")

	// ErrLockHeld is returned by [Service.TryLock] when another holder
	// has the lock. Nothing was changed.
	ErrLockHeld = errors.New("redisservice: lock held by another holder")

	// ErrLockLost is returned by [Lock.Refresh] and [Lock.Unlock] when
	// another holder took the key after this lock expired. The other
	// holder's lock is left as it is.
	ErrLockLost = errors.New("redisservice: lock lost to another holder")
)

// opError is the error of one call: the operation and the caller's key
// (or its redacted form) around the cause. It names the package once,
// `redisservice: set "k": invalid argument: NX with XX`, dropping the
// prefix of a sentinel's own text, and unwraps to the cause, so that
// [errors.Is] finds the sentinels, context errors and go-redis errors.
type opError struct {
	op, key string
	err     error
}

// wrapOp builds every error that a call returns.
func wrapOp(op, key string, err error) error {
	return &opError{op: op, key: key, err: err}
}

func (e *opError) Error() string {
	return "redisservice: " + e.op + " " + strconv.Quote(e.key) + ": " + errText(e.err)
}

// errText is the text of a cause inside an error that already names the
// package: err's, without a leading "redisservice: ".
func errText(err error) string { return strings.TrimPrefix(err.Error(), "redisservice: ") }

func (e *opError) Unwrap() error { return e.err }

// panicError is a Cache loader's panic, returned inside a loadError.
type panicError = flight.PanicError
