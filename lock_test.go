package redisservice

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLockExclusive: 20 goroutines each make 10 read-modify-write
// increments of a plain key under Lock; none is lost, and the tokens seen
// inside the lock, in the order the holders had it, only grow.
func TestLockExclusive(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		const workers, each = 20, 10
		var (
			mu     sync.Mutex // guards tokens
			tokens []int64
			wg     sync.WaitGroup
			errs   = make(chan error, workers)
		)
		for range workers {
			wg.Go(func() {
				for range each {
					if err := func() error {
						l, err := s.Lock(ctx, "stock", 10*time.Second)
						if err != nil {
							return err
						}
						mu.Lock()
						tokens = append(tokens, l.Token())
						mu.Unlock()
						v, _, err := s.Get(ctx, "count")
						if err != nil {
							return err
						}
						n, _ := strconv.Atoi(v)
						if _, err := s.Set(ctx, "count", n+1); err != nil {
							return err
						}
						return l.Unlock(ctx)
					}(); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		v, _, err := s.Get(ctx, "count")
		require.NoError(t, err)
		assert.Equal(t, strconv.Itoa(workers*each), v, "increments made under the lock")
		require.Len(t, tokens, workers*each)
		for i := 1; i < len(tokens); i++ {
			require.Greater(t, tokens[i], tokens[i-1], "token of holder %d", i)
		}
		assert.Equal(t, int64(1), tokens[0])
	})
}

// TestLockExpiryAndTakeover: a lock left to expire is taken by the next
// holder with a greater token; the old holder's Refresh and Unlock then
// fail with ErrLockLost and leave the new holder's lock alone.
func TestLockExpiryAndTakeover(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		other := b.service(t, Options{})
		ctx := ctxT(t)
		ttl := time.Second
		if b.real() {
			ttl = 100 * time.Millisecond
		}
		old, err := s.TryLock(ctx, "job", ttl)
		require.NoError(t, err)
		_, err = other.TryLock(ctx, "job", ttl)
		require.ErrorIs(t, err, ErrLockHeld, "TryLock of a held lock")

		b.pass(ttl)
		var taker *Lock
		b.waitFor(t, "the expired lock taken over", func() bool {
			taker, err = other.TryLock(ctx, "job", time.Minute)
			return err == nil
		})
		assert.Greater(t, taker.Token(), old.Token(), "the new holder's token")

		require.ErrorIs(t, old.Refresh(ctx, time.Minute), ErrLockLost, "the old holder's Refresh")
		require.ErrorIs(t, old.Unlock(ctx), ErrLockLost, "the old holder's Unlock")
		_, err = s.TryLock(ctx, "job", time.Minute)
		require.ErrorIs(t, err, ErrLockHeld, "the new holder's lock after the old one's Unlock")
		require.NoError(t, taker.Refresh(ctx, time.Minute), "the new holder's Refresh")
		require.NoError(t, taker.Unlock(ctx), "the new holder's Unlock")
		require.NoError(t, taker.Unlock(ctx), "a repeated Unlock")
		again, err := s.TryLock(ctx, "job", time.Minute)
		require.NoError(t, err, "TryLock after Unlock")
		assert.Greater(t, again.Token(), taker.Token())
	})
}

// TestLockRefreshAfterExpiry: a lock that expired and that no one took
// since is taken again by its holder's Refresh, with the same token, and
// its Unlock reports success; Refresh keeps a lock past its first TTL.
func TestLockRefreshAfterExpiry(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		ttl := time.Second
		if b.real() {
			ttl = 100 * time.Millisecond
		}
		l, err := s.TryLock(ctx, "report", ttl)
		require.NoError(t, err)
		b.pass(ttl)
		b.waitFor(t, "the lock expired", func() bool {
			n, err := b.client.Exists(ctx, b.raw("lock:{report}")).Result()
			return err == nil && n == 0
		})
		require.NoError(t, l.Refresh(ctx, time.Minute), "Refresh of an expired lock no one took")
		_, err = s.TryLock(ctx, "report", time.Minute)
		require.ErrorIs(t, err, ErrLockHeld, "the refreshed lock")
		assert.Equal(t, int64(1), l.Token())

		b.pass(2 * ttl) // within the refreshed minute
		_, err = s.TryLock(ctx, "report", time.Minute)
		require.ErrorIs(t, err, ErrLockHeld, "the refreshed lock after its first TTL")
		require.NoError(t, l.Unlock(ctx))
	})
}

// TestLockTokensOnlyGrow: tokens grow across holders of one key in two
// Services, whether each unlocked or let its lock expire; another key's
// tokens are its own.
func TestLockTokensOnlyGrow(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		svcs := []*Service{b.service(t, Options{}), b.service(t, Options{})}
		ctx := ctxT(t)
		var last int64
		for i := range 6 {
			l, err := svcs[i%2].Lock(ctx, "drawer", time.Minute)
			require.NoError(t, err)
			require.Greater(t, l.Token(), last, "token %d", i)
			last = l.Token()
			require.NoError(t, l.Unlock(ctx))
		}
		assert.Equal(t, int64(6), last)
		l, err := svcs[0].TryLock(ctx, "other drawer", time.Minute)
		require.NoError(t, err)
		assert.Equal(t, int64(1), l.Token(), "another key's first token")
	})
}

// TestLockWaits: Lock waits for the holder's Unlock, and for its expiry,
// and returns ctx's error when ctx ends first.
func TestLockWaits(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		held, err := s.TryLock(ctx, "till", time.Minute)
		require.NoError(t, err)

		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		_, err = s.Lock(short, "till", time.Minute)
		require.ErrorIs(t, err, context.DeadlineExceeded, "Lock while held, until ctx ends")

		got := make(chan *Lock, 1)
		go func() {
			l, err := s.Lock(ctx, "till", time.Minute)
			assert.NoError(t, err)
			got <- l
		}()
		require.NoError(t, held.Unlock(ctx))
		select {
		case l := <-got:
			require.NotNil(t, l)
			assert.Greater(t, l.Token(), held.Token())
		case <-ctx.Done():
			require.FailNow(t, "Lock never returned after Unlock")
		}
	})
}

// TestLockArguments: invalid arguments fail before anything is sent, and
// the lock namespace is reserved.
func TestLockArguments(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	_, err := s.TryLock(ctx, "", time.Second)
	assert.ErrorIs(t, err, ErrInvalidKey)
	_, err = s.Lock(ctx, "k", 0)
	assert.ErrorIs(t, err, ErrInvalidTTL)
	_, err = s.TryLock(ctx, "}k", time.Second)
	assert.ErrorIs(t, err, ErrInvalidKey, "a key whose hash tag would be empty")
	l, err := s.TryLock(ctx, "a{b}c", time.Second)
	require.NoError(t, err, "braces that keep one slot")
	assert.ErrorIs(t, l.Refresh(ctx, time.Microsecond), ErrInvalidTTL)

	_, err = s.Set(ctx, "lock:{k}", "x")
	assert.ErrorIs(t, err, ErrInvalidKey, "Set in the lock namespace")
	_, err = s.Del(ctx, "lock:{a{b}c}")
	assert.ErrorIs(t, err, ErrInvalidKey, "Del in the lock namespace")
	_, err = s.InvalidatePattern(ctx, "lock:*")
	assert.ErrorIs(t, err, ErrInvalidKey, "InvalidatePattern of the lock namespace")
	assert.Equal(t, int64(1), b.client.Exists(ctx, b.raw("lock:{a{b}c}")).Val(), "the lock")
	assert.Equal(t, int64(0), b.client.Exists(ctx, b.raw("lock:{k}")).Val())
}

// TestLockLostReplyDuringTryLock: TryLock whose reply is lost, and that
// go-redis sends again, takes the lock once with one token.
func TestLockLostReplyDuringTryLock(t *testing.T) {
	t.Parallel()
	forEachLossyBackend(t, func(t *testing.T, b *backend, l *lostReplies, s *Service) {
		ctx := ctxT(t)
		l.arm(loseAndClose, scriptOn(b.raw("lock:{pay}")))
		lk, err := s.TryLock(ctx, "pay", time.Minute)
		require.NoError(t, err, "TryLock with its first reply lost")
		require.Equal(t, int64(1), l.lost.Load(), "replies lost")
		require.GreaterOrEqual(t, l.seen.Load(), int64(2), "acquire sent again")
		assert.Equal(t, int64(1), lk.Token(), "token after a re-sent acquire")
		assert.Equal(t, "1", b.client.Get(ctx, b.raw("lock:{pay}:fence")).Val(), "fencing counter")
		require.NoError(t, lk.Unlock(ctx), "Unlock of the lock taken by the re-sent acquire")
		next, err := s.TryLock(ctx, "pay", time.Minute)
		require.NoError(t, err)
		assert.Equal(t, int64(2), next.Token())
	})
}

// TestLockLostReplyDuringUnlock: an Unlock whose reply is lost and that
// go-redis sends again reports success; one sent again after another
// holder took the lock fails with ErrLockLost and leaves that lock held.
func TestLockLostReplyDuringUnlock(t *testing.T) {
	t.Parallel()
	forEachLossyBackend(t, func(t *testing.T, b *backend, l *lostReplies, s *Service) {
		ctx := ctxT(t)
		other := newService(t, Options{Client: b.client, KeyPrefix: b.prefix})
		lk, err := s.TryLock(ctx, "pay", time.Minute)
		require.NoError(t, err)
		l.arm(loseAndClose, scriptOn(b.raw("lock:{pay}")))
		require.NoError(t, lk.Unlock(ctx), "Unlock with its first reply lost")
		require.Equal(t, int64(1), l.lost.Load(), "replies lost")
		require.GreaterOrEqual(t, l.seen.Load(), int64(2), "unlock sent again")

		// The reply to an Unlock is lost and the client gives up; another
		// holder takes the lock; the caller tries Unlock again.
		lk, err = s.TryLock(ctx, "pay", time.Minute)
		require.NoError(t, err)
		l.arm(loseAndHold, scriptOn(b.raw("lock:{pay}")))
		hold, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		err = lk.Unlock(hold)
		require.Equal(t, int64(2), l.lost.Load(), "the held unlock's reply thrown away")
		if err != nil {
			require.True(t, errors.Is(err, context.DeadlineExceeded) || isTimeout(err), "Unlock with its reply held: %v; want a timeout", err)
		}
		taker, err := other.TryLock(ctx, "pay", time.Minute)
		require.NoError(t, err, "the lock was released by the unlock whose reply was lost")
		require.ErrorIs(t, lk.Unlock(ctx), ErrLockLost, "Unlock again, after another holder took the lock")
		_, err = s.TryLock(ctx, "pay", time.Minute)
		require.ErrorIs(t, err, ErrLockHeld, "the other holder's lock")
		require.NoError(t, taker.Unlock(ctx))
	})
}
