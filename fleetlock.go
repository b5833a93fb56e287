package redisservice

import (
	"context"
	"time"
)

// This file makes the processes of a fleet that miss one key at the same
// time run its loader once: the first takes a short lock key with
// SET NX PX, in the same pipeline as its second look at the key; the
// others poll for the value the holder stores, and load themselves when
// the lock goes without a value (the holder failed or died) or after
// fleetLockTTL. The holder releases the lock in the pipeline that stores
// the value.

const (
	// fleetLockTTL is how long a lock holds without its holder: a load
	// that takes longer may run twice.
	fleetLockTTL = 10 * time.Second
	// fleetPollMin and fleetPollMax bound the pause between two polls of
	// a waiting process.
	fleetPollMin = 2 * time.Millisecond
	fleetPollMax = 50 * time.Millisecond
)

// lockOp is what a read does with key's fleet lock.
type lockOp int

const (
	lockNone  lockOp = iota
	lockTake         // SET NX PX: take it if free
	lockCheck        // EXISTS: is it held
)

// lockKey is the key of key's fleet lock.
func lockKey(key string) string { return key + ":redisservice-lock" }

// fleetWait waits for the value of the process that holds key's lock. It
// returns hit with that value; an error matching ErrNotFound when the
// holder left a not-found marker; or got when this process took the lock
// over (the holder went without a value), when the wait passed
// fleetLockTTL or when Redis failed: the caller loads then.
func fleetWait[T any](ctx context.Context, s *Service, key string, co cacheOptions) (got bool, v any, hit bool, err error) {
	end := time.Now().Add(fleetLockTTL)
	pause := fleetPollMin
	lock := lockCheck
	for time.Now().Before(end) {
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, nil, false, ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, fleetPollMax)
		val, st, r, err := recheck[T](ctx, s, key, co, lock)
		switch {
		case err != nil:
			return r.locked && lock == lockTake, nil, false, nil
		case st == stateFresh:
			if lock == lockTake && r.locked {
				s.unlockFleet(ctx, key)
			}
			return false, val, true, nil
		case st == stateNotFound:
			if lock == lockTake && r.locked {
				s.unlockFleet(ctx, key)
			}
			return false, nil, false, notFound(key)
		case lock == lockTake && r.locked:
			return true, nil, false, nil
		case lock == lockCheck && !r.locked:
			// The holder is gone without a value: take the lock over
			// now, looking at the key once more in the same round trip.
			lock, pause = lockTake, 0
			continue
		}
		lock = lockCheck
	}
	return true, nil, false, nil
}

// unlockFleet drops key's lock. It is not checked to be this process's:
// a lock that expired and was taken over only lets one more load run.
func (s *Service) unlockFleet(ctx context.Context, key string) {
	_, _ = call(s, context.WithoutCancel(ctx), "cache", key, func(ctx context.Context) (int64, error) {
		return s.rdb.Del(ctx, s.key(lockKey(key))).Result()
	})
}
