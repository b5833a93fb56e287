package redisservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file makes the processes of a fleet that miss one key at the same
// time run its loader once: the first takes a short lock key with
// SET NX PX; the others poll for the value the holder stores, and load
// themselves when the lock goes without a value (the holder failed or
// died) or when it outlives fleetLockTTL.

const (
	// fleetLockTTL is how long a lock holds without its holder: a load
	// that takes longer may run twice.
	fleetLockTTL = 10 * time.Second
	// fleetPollMin and fleetPollMax bound the pause between two polls of
	// a waiting process.
	fleetPollMin = 2 * time.Millisecond
	fleetPollMax = 50 * time.Millisecond
)

// lockKey is the key of key's fleet lock.
func lockKey(key string) string { return key + ":redisservice-lock" }

// fleetLock takes key's lock, or waits for the value of the process that
// holds it. It reports got when this process holds the lock (or the lock
// could not be asked for: the caller loads then); hit with the value the
// holder stored; or an error matching ErrNotFound when the holder left a
// not-found marker. With once, it does not wait: got is false when
// another process holds the lock.
func fleetLock[T any](ctx context.Context, s *Service, key string, co cacheOptions, once bool) (got bool, v any, hit bool, err error) {
	const op = "cache"
	ok, err := call(s, ctx, op, key, func(ctx context.Context) (bool, error) {
		return s.rdb.SetNX(ctx, s.key(lockKey(key)), "1", fleetLockTTL).Result()
	})
	if err != nil || ok {
		return true, nil, false, nil
	}
	if once {
		return false, nil, false, nil
	}
	end := time.Now().Add(fleetLockTTL)
	pause := fleetPollMin
	for time.Now().Before(end) {
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, nil, false, ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, fleetPollMax)
		r, locked, err := s.pollFleet(ctx, key, co.notFound > 0)
		switch {
		case err != nil:
			return true, nil, false, nil
		case r.notFound:
			return false, nil, false, fmt.Errorf("redisservice: %s %q: %w", op, key, ErrNotFound)
		case r.b != nil:
			var val T
			if json.Unmarshal(r.b, &val) == nil {
				return false, val, true, nil
			}
			return true, nil, false, nil // undecodable: load and overwrite
		case !locked:
			// The holder is gone without a value: take the lock over.
			return fleetLock[T](ctx, s, key, co, false)
		}
	}
	return true, nil, false, nil
}

// pollFleet reads key (and its not-found marker) and whether its lock is
// still held, in one round trip.
func (s *Service) pollFleet(ctx context.Context, key string, notFound bool) (readReply, bool, error) {
	var r readReply
	var locked bool
	_, err := call(s, ctx, "cache", key, func(ctx context.Context) (struct{}, error) {
		var lock *redis.IntCmd
		var err error
		_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			lock = p.Exists(ctx, s.key(lockKey(key)))
			return nil
		})
		r, err = s.readCached(ctx, readKey{key: key, notFound: notFound})
		if errors.Is(err, redis.Nil) {
			err = nil
		}
		if err == nil {
			locked, err = lock.Val() > 0, lock.Err()
		}
		return struct{}{}, err
	})
	return r, locked, err
}

// unlockFleet drops key's lock. It is not checked to be this process's:
// a lock that expired and was taken over only lets one more load run.
func (s *Service) unlockFleet(ctx context.Context, key string) {
	_, _ = call(s, context.WithoutCancel(ctx), "cache", key, func(ctx context.Context) (int64, error) {
		return s.rdb.Del(ctx, s.key(lockKey(key))).Result()
	})
}
