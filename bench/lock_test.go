package bench

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/vevurn/redisservice"
)

// lockTTL is the TTL of every lock the benchmarks take; each is released
// at once, so it never runs out.
const lockTTL = 10 * time.Second

// errHeld stands for "another holder has the lock" in every library.
var errHeld = errors.New("held")

// BenchmarkLock compares Service.TryLock + Unlock with bsm/redislock
// (Obtain + Release) and go-redsync/redsync with one Redis (NewMutex +
// TryLock + Unlock), on one Redis, all three on the same go-redis client,
// at 1 and 64 callers: with a key per caller ("keys": every try takes
// the lock), and with one key for all ("hot": most tries find it held,
// and acquired/op reports the share that took it). It reports round
// trips per try.
func BenchmarkLock(b *testing.B) {
	s := newService(b, redisservice.Options{})
	rdb := s.Client()
	rt := &roundTrips{}
	rdb.AddHook(rt)
	locker := redislock.New(rdb)
	rs := redsync.New(goredis.NewPool(rdb))
	ctx := context.Background()
	run := fmt.Sprintf("%d", time.Now().UnixNano())
	impls := []struct {
		name string
		try  func(key string) error // takes and releases key's lock, or returns errHeld
	}{
		{"service", func(key string) error {
			l, err := s.TryLock(ctx, key, lockTTL)
			if errors.Is(err, redisservice.ErrLockHeld) {
				return errHeld
			}
			if err != nil {
				return err
			}
			return l.Unlock(ctx)
		}},
		{"redislock", func(key string) error {
			l, err := locker.Obtain(ctx, key, lockTTL, nil)
			if errors.Is(err, redislock.ErrNotObtained) {
				return errHeld
			}
			if err != nil {
				return err
			}
			return l.Release(ctx)
		}},
		{"redsync", func(key string) error {
			m := rs.NewMutex(key, redsync.WithExpiry(lockTTL))
			err := m.TryLockContext(ctx)
			var taken *redsync.ErrTaken
			if errors.Is(err, redsync.ErrFailed) || errors.As(err, &taken) {
				return errHeld
			}
			if err != nil {
				return err
			}
			ok, err := m.UnlockContext(ctx)
			if err == nil && !ok {
				err = fmt.Errorf("redsync: Unlock: not released")
			}
			return err
		}},
	}
	for _, callers := range []int{1, 64} {
		for _, keys := range []string{"keys", "hot"} {
			if callers == 1 && keys == "hot" {
				continue // one caller never contends
			}
			for _, impl := range impls {
				b.Run(fmt.Sprintf("callers=%d/key=%s/impl=%s", callers, keys, impl.name), func(b *testing.B) {
					prefix := "bench:lock:" + impl.name + ":" + run + ":"
					var acquired atomic.Int64
					rt.n.Store(0)
					runWorkers(b, callers, func(worker int) func() error {
						key := prefix + "hot"
						if keys == "keys" {
							key = prefix + strconv.Itoa(worker)
						}
						return func() error {
							err := impl.try(key)
							switch {
							case err == nil:
								acquired.Add(1)
							case errors.Is(err, errHeld) && keys == "hot":
								err = nil
							}
							return err
						}
					})
					b.StopTimer()
					b.ReportMetric(float64(rt.n.Load())/float64(b.N), "roundtrips/op")
					if keys == "hot" {
						b.ReportMetric(float64(acquired.Load())/float64(b.N), "acquired/op")
					}
				})
			}
		}
	}
}

// runWorkers runs b.N operations in total over callers goroutines; each
// goroutine makes its operation once with newOp and its number (0 for a
// single caller). The timer is reset first.
func runWorkers(b *testing.B, callers int, newOp func(worker int) func() error) {
	b.Helper()
	b.ReportAllocs()
	if callers <= 1 {
		op := newOp(0)
		b.ResetTimer()
		for range b.N {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((callers + procs - 1) / procs)
	var next atomic.Int64
	var failed atomic.Bool
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		op := newOp(int(next.Add(1) - 1))
		for pb.Next() {
			if err := op(); err != nil {
				if failed.CompareAndSwap(false, true) {
					b.Error(err)
				}
				return
			}
		}
	})
}
