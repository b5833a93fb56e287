package redisservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/vevurn/redisservice/internal/localtier"
)

// Cache returns the value cached at key, or loads, caches and returns it
// (cache-aside). A hit decodes the JSON at key into a new T; on a miss
// Cache calls load and stores its result as JSON for ttl (PX, never
// longer). A value that does not decode into T, or of another Redis type,
// is a miss and is overwritten.
//
// One load per key and T runs at a time in a Service, however many
// callers miss it; they share its T, so do not modify it in place. A load
// runs to its end whoever waits: its ctx has the values of the ctx of the
// caller that started it, not its cancellation, and ends after
// [Options.Timeout] or at [Service.Close]. Each caller waits until its
// own ctx ends, then gets ctx's error; a ctx that has ended before the
// miss returns its error without loading. load's error is returned
// wrapped, nothing is cached, and the next miss loads again. A panic in
// load is returned to every waiting caller as an error (and logged),
// never re-raised: the process does not crash. A load that calls Cache
// for its own key and T gets [ErrInvalidArgument] instead of waiting for
// itself.
//
// When Redis fails, is known down ([ErrUnavailable]) or the Service is
// closed ([ErrClosed]), Cache returns load's value with the error; so it
// does for a key in a reserved namespace (see [Options.AllowReservedKeys])
// with [ErrInvalidKey], without touching Redis. Invalid arguments return
// the zero T without loading. README "Cache-aside" tells the round trips,
// the fleet lock ([WithoutFleetLock]), the local tier and the opts.
func Cache[T any](ctx context.Context, s *Service, key string, ttl time.Duration, load func(context.Context) (T, error), opts ...CacheOption) (_ T, err error) {
	const op = "cache"
	ctx, scope := s.tel.Begin(ctx, op, key)
	defer scope.End(ctx, &err)
	var zero T
	switch {
	case key == "":
		return zero, invalid(op, key, ErrInvalidKey)
	case load == nil:
		return zero, invalid(op, key, fmt.Errorf("%w: nil loader", ErrInvalidArgument))
	}
	if err := checkTTL(ttl); err != nil {
		return zero, invalid(op, key, err)
	}
	co, err := buildCacheOptions(opts)
	if err != nil {
		return zero, invalid(op, key, err)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if err := s.checkWriteKey(key); err != nil {
		return loadOnly(s.tel.Leave(ctx), s, op, key, load, invalid(op, key, err))
	}
	fk := flightKey{key: key, typ: reflect.TypeFor[T]()}
	lt := s.local
	if lt != nil && !s.closed.Load() {
		if v, ok := localHit(ctx, s, fk, ttl, load, co); ok {
			return v, nil
		}
	}
	rk := readKey{key: key, withTTL: lt != nil || co.swr > 0, notFound: co.notFound > 0}
	v, hit, reply, readErr := cacheRead[T](ctx, s, rk)
	switch {
	case hit:
		s.found(true)
		if lt != nil {
			localtier.Put(lt, key, reply.ticket, v, len(reply.b), reply.start, reply.pttl, co.swr)
		}
		if co.swr > 0 && reply.pttl >= 0 && reply.pttl <= co.swr {
			s.tel.CacheResult(ctx, cacheStale)
			refresh(ctx, s, fk, ttl, load, co)
		} else {
			s.tel.CacheResult(ctx, cacheHit)
		}
		return v, nil
	case reply.notFound:
		s.found(true)
		s.tel.CacheResult(ctx, cacheNotFound)
		return zero, notFound(key)
	case errors.Is(readErr, ErrClosed):
		return loadOnly(s.tel.Leave(ctx), s, op, key, load, readErr)
	case readErr == nil:
		s.found(false)
		s.tel.CacheResult(ctx, cacheMiss)
	}
	if cerr := ctx.Err(); cerr != nil {
		if readErr == nil {
			readErr = wrapOp(op, key, cerr)
		}
		return zero, readErr
	}
	// Redis answered: worth asking again inside the load, and storing.
	// Redis did not: a store would only make the callers wait once more.
	mode := loadRecheck | loadStore
	if readErr != nil {
		mode = 0
	}
	v, err = loadShared(ctx, s, fk, ttl, load, co, mode)
	if readErr != nil && err == nil {
		// This caller's own failure says more than the store's, which
		// was skipped or failed for the same reason.
		err = readErr
	}
	return v, err
}

// localHit returns fk's value from the local tier, if the tier has it,
// counting the hit, and starts a refresh when the value is stale.
func localHit[T any](ctx context.Context, s *Service, fk flightKey, ttl time.Duration, load func(context.Context) (T, error), co cacheOptions) (T, bool) {
	v, stale, ok := localtier.Get[T](s.local, fk.key, time.Now().UnixNano())
	if !ok {
		return v, false
	}
	s.found(true)
	if stale {
		s.tel.CacheResult(ctx, cacheStale)
		refresh(ctx, s, fk, ttl, load, co)
	} else {
		s.tel.CacheResult(ctx, cacheLocalHit)
	}
	return v, true
}

// loadOnly is Cache for a key it must not or cannot touch in Redis: it
// calls load in the caller's goroutine and returns its value with
// refused, or load's error. A panic in load is returned as an error, as
// from a shared load. A ctx that has already ended returns its error
// without calling load.
func loadOnly[T any](ctx context.Context, s *Service, op, key string, load func(context.Context) (T, error), refused error) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, wrapOp(op, key, err)
	}
	v, err := s.guarded(key, func(ctx context.Context) (any, error) { return load(ctx) })(ctx)
	if err != nil {
		var oerr *opError
		if !errors.As(err, &oerr) {
			err = wrapOp(op, key, &loadError{err})
		}
		return zero, err
	}
	t, _ := v.(T) // v is nil when T is an interface and load returned nil
	return t, refused
}

// notFound is the error of a remembered absence of key.
func notFound(key string) error {
	return wrapOp("cache", key, ErrNotFound)
}

// flightKey names one load, and one copy in the local tier: the caller's
// key and the type it decodes to, so that Cache[int] and Cache[string] on
// one key never share a result.
type flightKey struct {
	key string
	typ reflect.Type
}

// readKey names one shared read: the key, and what is read with it.
type readKey struct {
	key      string
	withTTL  bool // its PTTL
	notFound bool // whether its not-found marker exists
}

// readReply is what one read of a key found.
type readReply struct {
	b        []byte
	pttl     time.Duration    // the key's PTTL (-1: none) when read withTTL
	notFound bool             // the key is missing and its not-found marker exists
	locked   bool             // lockTake: this process took the fleet lock; lockCheck: the lock is held
	start    time.Time        // when the read was sent
	ticket   localtier.Ticket // the local tier's, taken before the read was sent
}

// cacheRead reads rk.key and what rk asks for, in one round trip, and
// decodes the value into a T. It reports hit only for a value that
// decodes; a missing or undecodable value is a miss with a nil error. The
// error is Redis's or [ErrUnavailable]. It counts no hit or miss.
func cacheRead[T any](ctx context.Context, s *Service, rk readKey) (T, bool, readReply, error) {
	const op = "cache"
	var v T
	key := rk.key
	r, err := s.reads.Get(ctx, rk, s.opts.Timeout, func(ctx context.Context, until time.Time) (readReply, error) {
		// call fails fast while Redis is known down, also for a caller
		// that reads again after a shared read failed.
		return call(s, ctx, op, key, func(ctx context.Context) (readReply, error) {
			if !until.IsZero() {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, until)
				defer cancel()
			}
			return s.readCached(ctx, rk, lockNone)
		})
	})
	var rerr redis.Error
	switch {
	case err == context.DeadlineExceeded || err == context.Canceled: //nolint:errorlint // the read group's own, unwrapped
		// This caller stopped waiting for another's read: its own ctx
		// ended, or Redis did not answer within its bound.
		return v, false, r, s.fail(ctx, op, key, err)
	case err == redis.Nil: //nolint:errorlint // call returns redis.Nil unwrapped
		return v, false, r, nil
	case errors.As(err, &rerr) && !errors.Is(err, ErrClosed):
		return v, false, readReply{}, nil // an error reply (counted and logged): a miss, overwritten by the SET
	case err != nil:
		return v, false, r, err
	}
	if json.Unmarshal(r.b, &v) != nil {
		var zero T
		return zero, false, readReply{}, nil
	}
	return v, true, r, nil
}

// readCached sends GET, with PTTL, EXISTS of the not-found marker and
// the fleet lock's command in the same pipeline when rk and lock ask for
// them. A missing key is redis.Nil; r.locked is set whatever the GET
// found.
func (s *Service) readCached(ctx context.Context, rk readKey, lock lockOp) (readReply, error) {
	r := readReply{start: time.Now()}
	if s.local != nil && lock == lockNone {
		var node *redis.Client
		r.ticket, node = s.localTicket(ctx, rk.key)
		if node != nil {
			nr, err := s.readFrom(ctx, node, rk, lock, r)
			var rerr redis.Error
			if err == nil || err == redis.Nil || !errors.As(err, &rerr) { //nolint:errorlint // go-redis returns redis.Nil unwrapped
				return nr, err
			}
			// MOVED, ASK, or another refusal: read through the cluster
			// client, which follows them, and keep nothing.
			if isRedirect(err) {
				s.local.RaiseDoubt()
			}
			r.ticket = localtier.Ticket{}
		}
	}
	return s.readFrom(ctx, s.rdb, rk, lock, r)
}

// readFrom is readCached's read, sent through rdb. rdb is s.rdb, or on a
// cluster the node client of rk.key's master: then the not-found marker,
// on another slot, is asked through s.rdb, and only when the key is
// missing.
func (s *Service) readFrom(ctx context.Context, rdb redis.UniversalClient, rk readKey, lock lockOp, r readReply) (readReply, error) {
	k := s.key(rk.key)
	node := rdb != s.rdb
	if !rk.withTTL && !rk.notFound && lock == lockNone {
		var b []byte
		var err error
		cmd := getCmd(ctx, k)
		if nc, ok := rdb.(*redis.Client); ok && node {
			err = s.processNode(ctx, nc, cmd)
		} else {
			err = s.process(ctx, cmd)
		}
		if err == nil {
			b, err = cmd.Bytes()
		}
		r.b = b
		return r, missingIfWrongType(err)
	}
	get := getCmd(ctx, k)
	var pttl *redis.DurationCmd
	var marker *redis.IntCmd
	var locked *redis.BoolCmd
	var lockExists *redis.IntCmd
	if lock == lockNone {
		cmds := append(make([]redis.Cmder, 0, 3), get)
		if rk.withTTL {
			pttl = redis.NewDurationCmd(ctx, time.Millisecond, "pttl", k)
			cmds = append(cmds, pttl)
		}
		if rk.notFound && !node {
			marker = redis.NewIntCmd(ctx, "exists", s.key(notFoundKey(rk.key)))
			cmds = append(cmds, marker)
		}
		ap := s.ap
		if nc, ok := rdb.(*redis.Client); ok && node {
			ap = s.nodePipeliner(nc)
		}
		if err := s.processAll(ctx, rdb, ap, cmds...); err != nil {
			return r, err
		}
	} else {
		// The fleet lock's SETNX stays on the plain client: a batch that
		// go-redis sent again after a lost reply would find the lock its
		// own first sending took.
		_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			switch lock {
			case lockTake: // first: a value stored before the lock was taken shows in the GET
				locked = p.SetNX(ctx, s.key(lockKey(rk.key)), "1", fleetLockTTL)
			case lockCheck:
				lockExists = p.Exists(ctx, s.key(lockKey(rk.key)))
			}
			_ = p.Process(ctx, get)
			if rk.withTTL {
				pttl = p.PTTL(ctx, k)
			}
			if rk.notFound && !node {
				marker = p.Exists(ctx, s.key(notFoundKey(rk.key)))
			}
			return nil
		})
	}
	switch {
	case locked != nil:
		ok, err := locked.Result()
		if err != nil {
			return r, err
		}
		r.locked = ok
	case lockExists != nil:
		n, err := lockExists.Result()
		if err != nil {
			return r, err
		}
		r.locked = n > 0
	}
	b, err := get.Bytes()
	err = missingIfWrongType(err)
	if err == redis.Nil && rk.notFound && node { //nolint:errorlint // go-redis returns redis.Nil unwrapped
		marker = redis.NewIntCmd(ctx, "exists", s.key(notFoundKey(rk.key)))
		if perr := s.process(ctx, marker); perr != nil && ctx.Err() != nil {
			return r, perr // the reply may still be on its way: read nothing
		}
	}
	if err == redis.Nil && marker != nil { //nolint:errorlint // go-redis returns redis.Nil unwrapped
		n, merr := marker.Result()
		if merr != nil {
			return r, merr
		}
		r.notFound = n > 0
	}
	if err != nil {
		return r, err
	}
	if pttl != nil {
		if err := pttl.Err(); err != nil {
			return r, err
		}
		r.pttl = pttl.Val()
	}
	r.b = b
	return r, nil
}

// missingIfWrongType turns a GET's WRONGTYPE into redis.Nil: a key of
// another type is a miss that the store overwrites, not a failure, and
// the commands sent with the GET (the fleet lock's) still count.
func missingIfWrongType(err error) error {
	var rerr redis.Error
	if errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "WRONGTYPE") {
		return redis.Nil
	}
	return err
}

// loadError is a loader's failure, as Cache returns it (wrapped with the
// op and key): "load: " and the loader's error, which it unwraps to.
type loadError struct{ err error }

func (e *loadError) Error() string { return "load: " + errText(e.err) }
func (e *loadError) Unwrap() error { return e.err }

// Is makes errors.Is(err, ErrLoad) hold for every loader failure.
func (e *loadError) Is(target error) bool { return target == ErrLoad }

// notFoundMarker is the value of a not-found marker: not JSON, so that no
// reader takes it for a cached value even at its own key.
const notFoundMarker = "redisservice:not-found"

// notFoundKey is the key of key's not-found marker: a key of its own, so
// that GetJSON and other readers of key see it missing, as it is, and
// InvalidatePattern with a trailing * removes both.
func notFoundKey(key string) string { return key + ":redisservice-not-found" }
