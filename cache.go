package redisservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cache returns the value cached at key, or loads, caches and returns it
// (cache-aside).
//
// A hit decodes the JSON stored at key into a new T. On a miss Cache calls
// load, stores its result as JSON with the time to live ttl (never longer:
// sent as PX in whole milliseconds) and returns it. Within one Service the
// callers that miss the same key (and T) at the same time share one call
// of load, however many they are; they then receive the same T, so do not
// modify a shared map, slice or pointer in place. The load that runs
// checks the key once more first, so a caller that missed just before
// another caller's load stored the value does not load again. A value at
// key that does not decode into T (other JSON, not JSON, another Redis
// type) is a miss and is overwritten. Callers that read the same key at
// the same moment share one GET, so a hot key costs one round trip per
// burst of callers; each decodes its own T. A caller that shares another's
// GET still gets its answer within its own bound (ctx's deadline, or
// [Options.Timeout] from its call), also when the other caller's request
// ended first.
//
// load is called exactly once per call of Cache that needs it, never
// retried. When it fails, Cache returns the zero T and load's error
// wrapped, and caches nothing. load receives a context with the values of
// the ctx of the caller that started it but not its cancellation: ctx
// bounds only how long each caller waits. A caller whose ctx ends gets
// ctx's error while the others keep waiting; load's context is cancelled
// only once every caller waiting for it has gone; a ctx that has already
// ended when Cache misses returns its error without calling load.
// [Options.Timeout] bounds each Redis round trip of Cache but not load:
// give ctx a deadline to bound how long a caller waits for load. A panic
// in load is re-raised in every caller waiting for it; a load that calls
// runtime.Goexit fails them with an error.
//
// When Redis cannot be used, Cache still returns load's value, together
// with an error: load runs as on a miss and nothing is cached (no store
// is tried after a failed read, so a call waits for Redis once at most). After a
// call found Redis unreachable (see [Service.IsConnected]), Cache does not
// touch Redis at all, so that an outage costs each call nothing but load:
// its error matches [ErrUnavailable] until a background PING sees Redis
// answer again (see [Service.IsConnected]). Only the calls that find the outage
// wait for Redis, up to [Options.Timeout] or their own deadline. After
// [Service.Close], Cache returns load's value with [ErrClosed].
//
// With [Options.LocalCacheEntries], a value read from Redis is kept
// decoded in process and later hits share it (do not modify it); copies
// are dropped when their key changes in Redis. opts add
// [StaleWhileRevalidate] and [NotFoundTTL]. Across processes, a miss takes
// a short lock key (key + ":redisservice-lock", SET NX PX 10s): one
// process loads while the others poll for its value, and load themselves
// when the lock goes without a value or after 10 s. The lock rides in the
// round trips a miss makes anyway (two more commands, no more round
// trips); [WithoutFleetLock] turns it off. README "Cache-aside" gives the
// details and their costs.
//
// An empty key fails with [ErrInvalidKey], a ttl below one millisecond
// with [ErrInvalidTTL] and a nil load or an invalid option with
// [ErrInvalidArgument] or [ErrInvalidTTL]; load is then not called and the
// zero T is returned.
//
// A key in a namespace the Service keeps for its own keys (sessions, rate
// limits; see [Options.AllowReservedKeys]) is
// refused as [Service.Set] refuses it, so that a key name built from user
// input cannot forge a session through Cache. As when Redis cannot be
// used, Cache then still returns load's value, with an error matching
// [ErrInvalidKey]: load runs (once per call, not shared) and Redis is not
// touched. When load fails, its error is returned instead.
func Cache[T any](ctx context.Context, s *Service, key string, ttl time.Duration, load func(context.Context) (T, error), opts ...CacheOption) (_ T, err error) {
	const op = "cache"
	ctx, scope := s.tel.begin(ctx, op, key)
	defer scope.end(ctx, &err)
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
		return loadOnly(s.tel.leave(ctx), op, key, load, invalid(op, key, err))
	}
	fk := flightKey{key: key, typ: reflect.TypeFor[T]()}
	lt := s.local
	if lt != nil && lt.usable() && !s.closed.Load() {
		now := time.Now().UnixNano()
		if e, ok := lt.get(fk, now); ok {
			s.found(true)
			if e.stale != 0 && now >= e.stale {
				s.tel.cacheResult(ctx, cacheStale)
				refresh(ctx, s, fk, ttl, load, co)
			} else {
				s.tel.cacheResult(ctx, cacheLocalHit)
			}
			return e.val.(T), nil
		}
	}
	rk := readKey{key: key, withTTL: lt != nil || co.swr > 0, notFound: co.notFound > 0}
	v, hit, reply, readErr := cacheRead[T](ctx, s, rk)
	switch {
	case hit:
		s.found(true)
		if lt != nil {
			lt.put(fk, reply.ticket, v, reply.start, reply.pttl, co.swr)
		}
		if co.swr > 0 && reply.pttl >= 0 && reply.pttl <= co.swr {
			s.tel.cacheResult(ctx, cacheStale)
			refresh(ctx, s, fk, ttl, load, co)
		} else {
			s.tel.cacheResult(ctx, cacheHit)
		}
		return v, nil
	case reply.notFound:
		s.found(true)
		s.tel.cacheResult(ctx, cacheNotFound)
		return zero, notFound(key)
	}
	if readErr == nil {
		s.found(false)
		s.tel.cacheResult(ctx, cacheMiss)
	}
	// Redis answered: worth asking again inside the flight, and storing.
	// Redis did not: a store would only make the caller wait once more.
	mode := loadRecheck | loadStore
	if readErr != nil {
		mode = 0
	}
	res, err := s.flights.do(ctx, fk, func(lctx context.Context) (any, error) {
		return loadAndStore(lctx, s, key, ttl, load, co, mode)
	})
	if res == nil { // load failed, this caller stopped waiting, or load returned a nil interface
		if err == nil {
			return zero, readErr
		}
		if cerr := ctx.Err(); (cerr != nil && err == cerr) || err == errGoexit { //nolint:errorlint // do returns these itself
			err = wrapOp(op, key, fmt.Errorf("load: %w", err))
		}
		return zero, err
	}
	if readErr != nil {
		// This caller's own failure says more than the store's, which
		// was skipped or failed for the same reason.
		err = readErr
	}
	return res.(T), err
}

// loadOnly is Cache for a key it must not touch in Redis: it calls load
// and returns its value with refused, or load's error. A ctx that has
// already ended returns its error without calling load.
func loadOnly[T any](ctx context.Context, op, key string, load func(context.Context) (T, error), refused error) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, wrapOp(op, key, err)
	}
	v, err := load(ctx)
	if err != nil {
		return zero, wrapOp(op, key, &loadError{err})
	}
	return v, refused
}

// refresh reloads key in the background for StaleWhileRevalidate, unless
// a refresh of key (and T) is running in this process already. The load
// gets ctx's values, not its cancellation; Close cancels it.
func refresh[T any](ctx context.Context, s *Service, fk flightKey, ttl time.Duration, load func(context.Context) (T, error), co cacheOptions) {
	if _, running := s.refreshing.LoadOrStore(fk, struct{}{}); running {
		return
	}
	values := context.WithoutCancel(ctx)
	started := s.goBackground(func(bg context.Context) {
		defer s.refreshing.Delete(fk)
		lctx, cancel := context.WithCancel(values)
		defer context.AfterFunc(bg, cancel)()
		defer cancel()
		lctx, scope := s.tel.begin(lctx, "cache.refresh", fk.key) // a span and count of its own
		_, err := s.flights.do(lctx, fk, func(lctx context.Context) (any, error) {
			return loadAndStore(lctx, s, fk.key, ttl, load, co, loadStore)
		})
		scope.end(lctx, &err)
	})
	if !started {
		s.refreshing.Delete(fk)
	}
}

// What loadAndStore does besides calling load.
const (
	loadRecheck = 1 << iota // read the key once more first: another caller may have stored it
	loadStore               // store the value
)

// loadAndStore is the shared part of a miss: check once more, call load,
// store its value, as mode says. Unless co turns it off, a store is
// guarded by the fleet lock (fleetlock.go): the recheck takes it in the
// same round trip, and the store releases it in the same round trip. It
// returns the value and load's error, or the value and the error that
// kept it from being stored. A load that fails with ErrNotFound leaves the
// not-found marker when co asks for it.
func loadAndStore[T any](ctx context.Context, s *Service, key string, ttl time.Duration, load func(context.Context) (T, error), co cacheOptions, mode int) (any, error) {
	const op = "cache"
	locking := mode&loadStore != 0 && !co.noFleetLock
	locked := false
	switch {
	case mode&loadRecheck != 0:
		lock := lockNone
		if locking {
			lock = lockTake
		}
		v, fresh, r, err := recheck[T](ctx, s, key, co, lock)
		locked = r.locked
		switch {
		case fresh || r.notFound:
			if locked {
				s.unlockFleet(ctx, key)
			}
			if r.notFound {
				return nil, notFound(key)
			}
			return v, nil
		case locking && err == nil && !locked:
			// Another process loads: wait for its value.
			got, v, hit, err := fleetWait[T](ctx, s, key, co)
			switch {
			case hit:
				return v, nil
			case errors.Is(err, ErrNotFound):
				return nil, err
			}
			locked = got
		}
	case locking:
		// A refresh: the process that holds the lock refreshes for all.
		got, err := s.takeFleetLock(ctx, key)
		if err == nil && !got {
			return nil, nil
		}
		locked = got
	}
	v, err := load(s.tel.leave(ctx)) // the loader's own calls are not this call's round trips
	if err != nil {
		err = wrapOp(op, key, &loadError{err})
		if co.notFound > 0 && mode&loadStore != 0 && errors.Is(err, ErrNotFound) {
			_, _ = call(s, context.WithoutCancel(ctx), op, key, func(ctx context.Context) (string, error) {
				return s.rdb.Set(ctx, s.key(notFoundKey(key)), notFoundMarker, co.notFound).Result()
			})
		}
		if locked {
			s.unlockFleet(ctx, key)
		}
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		if locked {
			s.unlockFleet(ctx, key)
		}
		return v, invalid(op, key, fmt.Errorf("%w: %w", ErrInvalidArgument, err))
	}
	if mode&loadStore == 0 {
		return v, nil
	}
	// The value is worth storing even when every caller has gone: the
	// write is bounded by Options.Timeout instead.
	_, err = call(s, context.WithoutCancel(ctx), op, key, func(ctx context.Context) (string, error) {
		if co.notFound == 0 && !locked {
			return s.rdb.Set(ctx, s.key(key), b, ttl+co.swr).Result()
		}
		// The marker of an earlier absence and the lock go with the store.
		var set *redis.StatusCmd
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			set = p.Set(ctx, s.key(key), b, ttl+co.swr)
			if co.notFound > 0 {
				p.Del(ctx, s.key(notFoundKey(key)))
			}
			if locked {
				p.Del(ctx, s.key(lockKey(key)))
			}
			return nil
		})
		if err != nil {
			return "", err
		}
		return set.Result()
	})
	return v, err
}

// recheck reads key once more inside a load, doing lock in the same round
// trip, and reports whether it found a fresh value. A missing or
// undecodable value is no error.
func recheck[T any](ctx context.Context, s *Service, key string, co cacheOptions, lock lockOp) (T, bool, readReply, error) {
	var v T
	rk := readKey{key: key, withTTL: co.swr > 0, notFound: co.notFound > 0}
	r, err := call(s, ctx, "cache", key, func(ctx context.Context) (readReply, error) {
		return s.readCached(ctx, rk, lock)
	})
	var rerr redis.Error
	switch {
	case err == redis.Nil: //nolint:errorlint // call returns redis.Nil unwrapped
		return v, false, r, nil
	case errors.As(err, &rerr) && !errors.Is(err, ErrClosed):
		return v, false, r, nil // WRONGTYPE: overwritten by the store
	case err != nil:
		return v, false, r, err
	}
	if json.Unmarshal(r.b, &v) != nil {
		var zero T
		return zero, false, r, nil
	}
	return v, co.swr == 0 || r.pttl < 0 || r.pttl > co.swr, r, nil
}

// notFound is the error of a remembered absence of key.
func notFound(key string) error {
	return wrapOp("cache", key, ErrNotFound)
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
	pttl     time.Duration // the key's PTTL (-1: none) when read withTTL
	notFound bool          // the key is missing and its not-found marker exists
	locked   bool          // lockTake: this process took the fleet lock; lockCheck: the lock is held
	start    time.Time     // when the read was sent
	ticket   localTicket   // the local tier's, taken before the read was sent
}

// cacheRead reads rk.key and what rk asks for, in one round trip, and
// decodes the value into a T. It reports hit only for a value that
// decodes; a missing or undecodable value is a miss with a nil error. The
// error is Redis's or [ErrUnavailable]. It counts no hit or miss.
func cacheRead[T any](ctx context.Context, s *Service, rk readKey) (T, bool, readReply, error) {
	const op = "cache"
	var v T
	key := rk.key
	r, err := s.reads.get(ctx, rk, s.opts.Timeout, func(ctx context.Context, until time.Time) (readReply, error) {
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
		return v, false, readReply{}, nil // WRONGTYPE: undecodable, overwritten by the SET
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
	if s.local != nil {
		r.ticket = s.local.ticket(rk.key)
	}
	k := s.key(rk.key)
	if !rk.withTTL && !rk.notFound && lock == lockNone {
		b, err := s.rdb.Get(ctx, k).Bytes()
		r.b = b
		return r, err
	}
	var get *redis.StringCmd
	var pttl *redis.DurationCmd
	var marker *redis.IntCmd
	var locked *redis.BoolCmd
	var lockExists *redis.IntCmd
	_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		switch lock {
		case lockTake: // first: a value stored before the lock was taken shows in the GET
			locked = p.SetNX(ctx, s.key(lockKey(rk.key)), "1", fleetLockTTL)
		case lockCheck:
			lockExists = p.Exists(ctx, s.key(lockKey(rk.key)))
		}
		get = p.Get(ctx, k)
		if rk.withTTL {
			pttl = p.PTTL(ctx, k)
		}
		if rk.notFound {
			marker = p.Exists(ctx, s.key(notFoundKey(rk.key)))
		}
		return nil
	})
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

// loadError is a loader's failure, as Cache returns it (wrapped with the
// op and key): "load: " and the loader's error, which it unwraps to.
type loadError struct{ err error }

func (e *loadError) Error() string { return "load: " + e.err.Error() }
func (e *loadError) Unwrap() error { return e.err }

// notFoundMarker is the value of a not-found marker: not JSON, so that no
// reader takes it for a cached value even at its own key.
const notFoundMarker = "redisservice:not-found"

// notFoundKey is the key of key's not-found marker: a key of its own, so
// that GetJSON and other readers of key see it missing, as it is, and
// InvalidatePattern with a trailing * removes both.
func notFoundKey(key string) string { return key + ":redisservice-not-found" }
