package redisservice

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitForWaiters polls until n callers wait for the read of key.
func waitForWaiters(t *testing.T, g *readGroup, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.mu.Lock()
		r := g.reads[key]
		got := 0
		if r != nil {
			got = r.waiters
		}
		g.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d callers wait for %q; want %d", got, key, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestReadGroupSharesOneRead(t *testing.T) {
	t.Parallel()
	var g readGroup
	var calls atomic.Int32
	release := make(chan struct{})
	fn := func(context.Context) ([]byte, error) {
		calls.Add(1)
		<-release
		return []byte("v"), nil
	}
	const callers = 20
	var wg sync.WaitGroup
	results := make([]string, callers)
	wg.Add(1)
	go func() { defer wg.Done(); b, _ := g.get(context.Background(), "k", fn); results[0] = string(b) }()
	waitForWaiters(t, &g, "k", 0)
	for i := 1; i < callers; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); b, _ := g.get(context.Background(), "k", fn); results[i] = string(b) }()
	}
	waitForWaiters(t, &g, "k", callers-1)
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("%d concurrent reads of one key ran fn %d times; want 1", callers, n)
	}
	for i, r := range results {
		if r != "v" {
			t.Errorf("caller %d got %q; want v", i, r)
		}
	}
	if b, _ := g.get(context.Background(), "k", func(context.Context) ([]byte, error) { return []byte("w"), nil }); string(b) != "w" {
		t.Errorf("a read after the shared one got %q; want a fresh read", b)
	}
}

func TestReadGroupLeaderCancelled(t *testing.T) {
	t.Parallel()
	var g readGroup
	leaderCtx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	leaderErr := make(chan error, 1)
	go func() {
		_, err := g.get(leaderCtx, "k", func(ctx context.Context) ([]byte, error) {
			close(started)
			<-ctx.Done()
			return nil, ctx.Err()
		})
		leaderErr <- err
	}()
	<-started
	followerB := make(chan string, 1)
	go func() {
		b, err := g.get(context.Background(), "k", func(context.Context) ([]byte, error) { return []byte("own"), nil })
		if err != nil {
			followerB <- "error: " + err.Error()
			return
		}
		followerB <- string(b)
	}()
	waitForWaiters(t, &g, "k", 1)
	cancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Errorf("leader got %v; want context.Canceled", err)
	}
	if got := <-followerB; got != "own" {
		t.Errorf("follower of a cancelled read got %q; want its own read", got)
	}
}
