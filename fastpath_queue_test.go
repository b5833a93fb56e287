package redisservice

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAutoPipelineQueueFull: with the default options and the queue
// bounded to queueLimit commands, calls made while a held batch keeps it
// full fail at once with the fallback and an error matching
// redis.ErrAutoPipelineQueueFull; that does not take Redis as down
// (IsConnected stays true, and the calls fail for no other reason), the
// queued calls succeed once the batch goes through, and every slot comes
// back: a second round fills the queue with as many calls as the first.
// It runs on every backend and on a Service dialled through the
// sentinels (keys of its own on their master, nothing failed over).
func TestAutoPipelineQueueFull(t *testing.T) {
	t.Parallel()
	const queueLimit = 8
	opts := Options{Timeout: time.Minute, queueLimit: queueLimit}
	forEachBackend(t, func(t *testing.T, b *backend) {
		queueFullFailsAlone(t, b.service(t, opts))
	})
	t.Run("sentinel", func(t *testing.T) {
		ss := sentinelSetOrSkip(t)
		ss.waitHealthy(t)
		queueFullFailsAlone(t, sentinelService(t, ss, opts))
	})
}

// queueFullFailsAlone is TestAutoPipelineQueueFull on s, made with
// Options.queueLimit.
func queueFullFailsAlone(t *testing.T, s *Service) {
	t.Helper()
	require.NotNil(t, s.ap, "the Service has no autopipeliner")
	limit := s.opts.queueLimit
	callers := 3 * limit
	ctx := ctxT(t)
	for round := range 2 {
		queued, rejected := fillQueue(t, s, strconv.Itoa(round), callers)
		assert.Equal(t, limit-1, queued, "round %d: calls queued behind the held batch (the queue holds it too)", round)
		assert.Equal(t, callers-limit+1, rejected, "round %d: calls refused with the queue full", round)
	}
	assert.True(t, s.IsConnected(), "IsConnected after the queue was full")
	_, err := s.Set(ctx, "after", "v")
	require.NoError(t, err, "Set after the queue was full")
	v, found, err := s.Get(ctx, "after")
	require.NoError(t, err, "Get after the queue was full")
	assert.True(t, found && v == "v", "Get(after) = %q, %v; want v, true", v, found)
	waitFor(t, "the autopipeliner's queue empties", func() bool { return s.ap.Len() == 0 })
}

// fillQueue holds a lone Set on s's plain client, so that every call
// after it goes through the autopipeliner, and a Get's batch there; then
// it makes callers concurrent Gets behind them, waits until all but the
// queue's room have been refused, checks them, and releases the held
// commands. It returns how many Gets were queued and how many refused,
// once all have returned. Its keys, named after round, share one hash
// tag, so that on a cluster the Gets queue behind the held batch.
func fillQueue(t *testing.T, s *Service, round string, callers int) (queued, rejected int) {
	t.Helper()
	ctx := ctxT(t)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	loneHeld, batchHeld := make(chan struct{}, 1), make(chan struct{}, 1)
	lone, batch := "{q}lone"+round, "{q}batch"+round
	s.rdb.AddHook(holdHook{key: s.key(lone), held: loneHeld, release: release})
	s.rdb.AddHook(holdHook{key: s.key(batch), held: batchHeld, release: release})
	waitHeld := func(held <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-held:
		case <-time.After(waitDeadline):
			require.FailNow(t, what+" never reached Redis")
		}
	}

	var wg sync.WaitGroup
	var heldErrs [2]error
	wg.Go(func() { _, heldErrs[0] = s.Set(ctx, lone, "v") })
	waitHeld(loneHeld, "the lone Set")
	wg.Go(func() { _, _, heldErrs[1] = s.Get(ctx, batch) })
	waitHeld(batchHeld, "the held batch's Get")

	var refused, others atomic.Int64
	var mu sync.Mutex // guards failures
	var failures []string
	for i := range callers {
		wg.Go(func() {
			key := "{q}f" + round + "." + strconv.Itoa(i)
			v, found, err := s.Get(ctx, key)
			switch {
			case err == nil:
				others.Add(1)
				return
			case !errors.Is(err, redis.ErrAutoPipelineQueueFull):
			case v != "" || found:
			default:
				refused.Add(1)
				return
			}
			others.Add(1)
			mu.Lock()
			failures = append(failures, fmt.Sprintf("Get(%q) = %q, %v, %v; want \"\", false, an error matching %v", key, v, found, err, redis.ErrAutoPipelineQueueFull))
			mu.Unlock()
		})
	}
	want := int64(callers - s.opts.queueLimit + 1)
	// Every call but those the queue has room for returns while the batch
	// is held: refused, or (a failure) otherwise.
	waitFor(t, "round "+round+": calls returned with the queue full", func() bool { return refused.Load()+others.Load() >= want })
	assert.Zero(t, others.Load(), "round %s: calls returned, not refused, while the batch was held", round)
	assert.True(t, s.IsConnected(), "round %s: IsConnected with the queue full", round)
	unblock()
	wg.Wait()
	require.NoError(t, heldErrs[0], "round %s: the held Set", round)
	require.NoError(t, heldErrs[1], "round %s: the held batch's Get", round)
	mu.Lock()
	defer mu.Unlock()
	for _, f := range failures {
		assert.Fail(t, "round "+round+": "+f)
	}
	return int(others.Load()) - len(failures), int(refused.Load())
}
