package redisservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/vevurn/redisservice/internal/flight"
)

// This file is the load half of Cache: one load per key and type at a
// time in this process (internal/flight), one per fleet (fleetlock.go),
// the background refresh of StaleWhileRevalidate, and what a load stores.

// What loadAndStore does besides calling load.
const (
	loadRecheck = 1 << iota // read the key once more first: another caller may have stored it
	loadStore               // store the value
	loadRefresh             // a StaleWhileRevalidate refresh: a stale value is there
)

// errReentrant is Cache's answer to a load that asks for its own key.
var errReentrant = fmt.Errorf("%w: the loader calls Cache for the key it is loading", ErrInvalidArgument)

// loadShared is Cache's miss: it starts key's load unless one is in
// flight, and waits for it until ctx ends. mode is what the load does
// besides calling load, if this call starts it.
func loadShared[T any](ctx context.Context, s *Service, fk flightKey, ttl time.Duration, load func(context.Context) (T, error), co cacheOptions, mode int) (T, error) {
	const op = "cache"
	var zero T
	// A caller without a deadline waits for the load and its store.
	res, err := s.flights.Do(ctx, fk, s.opts.Timeout, s.guarded(fk.key, func(lctx context.Context) (any, error) {
		return loadAndStore(lctx, s, fk.key, ttl, load, co, mode)
	}))
	switch {
	case err == flight.ErrClosed: //nolint:errorlint // the group's own refusal, unwrapped
		return loadOnly(s.tel.Leave(ctx), s, op, fk.key, load, wrapOp(op, fk.key, ErrClosed))
	case err == flight.ErrReentrant: //nolint:errorlint // the group's own refusal, unwrapped
		return zero, invalid(op, fk.key, errReentrant)
	}
	var oerr *opError
	if err != nil && !errors.As(err, &oerr) {
		if errors.Is(err, flight.ErrGoexit) {
			err = wrapOp(op, fk.key, &loadError{err})
		} else { // this caller's own ctx, or its bound: not load's failure
			err = wrapOp(op, fk.key, err)
		}
	}
	if res == nil { // load failed, this caller stopped waiting, or load returned a nil interface
		return zero, err
	}
	return res.(T), err
}

// refresh reloads key in the background for StaleWhileRevalidate, unless
// a load of key (and T) is in flight in this process already; ctx gives
// the load its values. The refresh owns one invariant: the stale copies
// of key in the local tier go before its mark (the flight) does, so that
// no call between the two finds a stale copy and no refresh to wait for.
func refresh[T any](ctx context.Context, s *Service, fk flightKey, ttl time.Duration, load func(context.Context) (T, error), co cacheOptions) {
	_ = s.flights.Start(ctx, fk, s.opts.Timeout, s.guarded(fk.key, func(lctx context.Context) (_ any, err error) {
		defer s.dropLocal(fk.key)
		lctx, scope := s.tel.Begin(lctx, "cache.refresh", fk.key) // a span and count of its own
		defer scope.End(lctx, &err)
		return loadAndStore(lctx, s, fk.key, ttl, load, co, loadRecheck|loadStore|loadRefresh)
	}))
}

// dropLocal drops the local tier's copies of key.
func (s *Service) dropLocal(key string) {
	if s.local != nil {
		s.local.Invalidate(key)
	}
}

// guarded returns fn turned into a load that never panics: a panic in fn
// becomes an error that every caller waiting for the load gets, and a
// log line, since none may be waiting.
func (s *Service) guarded(key string, fn func(context.Context) (any, error)) func(context.Context) (any, error) {
	return func(ctx context.Context) (v any, err error) {
		defer func() {
			if r := recover(); r != nil {
				p := flight.NewPanicError(r)
				s.logPanic(ctx, p)
				v, err = nil, wrapOp("cache", key, &loadError{p})
			}
		}()
		return fn(ctx)
	}
}

// logPanic logs a loader's panic, at most once a second. The key is left
// out: it may hold personal data, and the callers' errors name it.
func (s *Service) logPanic(ctx context.Context, p *panicError) {
	allowed, suppressed := s.logGate.allow("cache.panic", time.Now().UnixNano())
	if !allowed {
		s.stats.logsSuppressed.Add(1)
		return
	}
	s.log.LogAttrs(ctx, slog.LevelError, "redisservice: cache loader panicked",
		slog.String("panic", fmt.Sprint(p.Value)),
		slog.String("stack", string(p.Stack)),
		slog.Uint64("suppressed", suppressed))
}

// loadAndStore is the shared part of a miss or a refresh: check once
// more, call load, store its value, as mode says. Unless co turns it off,
// a store is guarded by the fleet lock (fleetlock.go): the recheck takes
// it in the same round trip, and the store releases it in the same round
// trip; any other way out (a failure, a panic, runtime.Goexit) releases
// it too. It returns the value and load's error, or the value and the
// error that kept it from being stored. A load that fails with
// ErrNotFound removes a stale value, and leaves the not-found marker
// when co asks for it.
func loadAndStore[T any](ctx context.Context, s *Service, key string, ttl time.Duration, load func(context.Context) (T, error), co cacheOptions, mode int) (_ any, err error) {
	const op = "cache"
	locking := mode&loadStore != 0 && !co.noFleetLock
	locked := false
	defer func() {
		if locked {
			s.unlockFleet(ctx, key)
		}
	}()
	if mode&loadRecheck != 0 {
		lock := lockNone
		if locking {
			lock = lockTake
		}
		v, st, r, err := recheck[T](ctx, s, key, co, lock)
		locked = r.locked
		switch {
		case st == stateFresh:
			return v, nil
		case st == stateNotFound:
			return nil, notFound(key)
		case !locking || err != nil || locked:
			// Load: this process holds the lock, or there is none to take.
		case st == stateStale && mode&loadRefresh != 0:
			return v, nil // another process refreshes it
		default:
			// Another process loads: wait for its value.
			got, v, hit, err := fleetWait[T](ctx, s, key, co)
			switch {
			case hit:
				return v, nil
			case err != nil:
				if !errors.Is(err, ErrNotFound) {
					err = wrapOp(op, key, err)
				}
				return nil, err
			}
			locked = got
		}
	}
	v, err := load(s.tel.Leave(ctx)) // the loader's own calls are not this call's round trips
	if err != nil {
		err = wrapOp(op, key, &loadError{err})
		if mode&loadStore != 0 && errors.Is(err, ErrNotFound) && (co.notFound > 0 || mode&loadRefresh != 0) {
			s.storeAbsence(ctx, key, co, locked)
			locked = false
		}
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return v, invalid(op, key, fmt.Errorf("%w: %w", ErrInvalidArgument, err))
	}
	if mode&loadStore == 0 {
		return v, nil
	}
	err = s.storeValue(ctx, key, b, ttl+co.swr, co, locked)
	locked = false
	return v, err
}

// storeValue stores b at key for ttl, deleting the not-found marker when
// co uses one and the fleet lock when this process holds it, in one
// round trip. The value is worth storing even when every caller has
// gone, so the write is bounded by Options.Timeout, not by ctx.
func (s *Service) storeValue(ctx context.Context, key string, b []byte, ttl time.Duration, co cacheOptions, locked bool) error {
	_, err := call(s, context.WithoutCancel(ctx), "cache", key, func(ctx context.Context) (string, error) {
		if co.notFound == 0 && !locked {
			return s.rdb.Set(ctx, s.key(key), b, ttl).Result()
		}
		var set *redis.StatusCmd
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			set = p.Set(ctx, s.key(key), b, ttl)
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
	return err
}

// storeAbsence records that load found nothing for key: it deletes a
// stale value, sets the not-found marker when co asks for one, and
// deletes the fleet lock when this process holds it, in one round trip.
// Its failure is counted and logged, not returned: load's ErrNotFound is
// the answer.
func (s *Service) storeAbsence(ctx context.Context, key string, co cacheOptions, locked bool) {
	_, _ = call(s, context.WithoutCancel(ctx), "cache", key, func(ctx context.Context) ([]redis.Cmder, error) {
		return s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Del(ctx, s.key(key))
			if co.notFound > 0 {
				p.Set(ctx, s.key(notFoundKey(key)), notFoundMarker, co.notFound)
			}
			if locked {
				p.Del(ctx, s.key(lockKey(key)))
			}
			return nil
		})
	})
}

// readState is what a read of a key inside a load found.
type readState int

const (
	stateMissing  readState = iota // no value, or one that does not decode into T
	stateStale                     // a value in its StaleWhileRevalidate time
	stateFresh                     // a value to return
	stateNotFound                  // no value, and the not-found marker
)

// recheck reads key once more inside a load, doing lock in the same round
// trip, and reports what it found. A missing or undecodable value is no
// error.
func recheck[T any](ctx context.Context, s *Service, key string, co cacheOptions, lock lockOp) (T, readState, readReply, error) {
	var v T
	rk := readKey{key: key, withTTL: co.swr > 0, notFound: co.notFound > 0}
	r, err := call(s, ctx, "cache", key, func(ctx context.Context) (readReply, error) {
		return s.readCached(ctx, rk, lock)
	})
	switch {
	case err == redis.Nil && r.notFound: //nolint:errorlint // call returns redis.Nil unwrapped
		return v, stateNotFound, r, nil
	case err == redis.Nil: //nolint:errorlint // call returns redis.Nil unwrapped
		return v, stateMissing, r, nil
	case err != nil:
		return v, stateMissing, r, err
	}
	if json.Unmarshal(r.b, &v) != nil {
		var zero T
		return zero, stateMissing, r, nil
	}
	if co.swr > 0 && r.pttl >= 0 && r.pttl <= co.swr {
		return v, stateStale, r, nil
	}
	return v, stateFresh, r, nil
}
