package redisservice

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// The fast path. A call that sends one command (Get, Set, the JSON and
// hash calls, Cache's plain reads, session reads, the rate-limit scripts)
// sends it through process: straight on the plain client when it is the
// only such call in flight, as one round trip of its own; through
// go-redis's deferred autopipeliner when others are in flight, so that
// concurrent callers share round trips. A queued command runs on the
// autopipeliner's own context, so the caller does not wait for it past
// its ctx: it stops waiting at once when ctx ends and never reads the
// command afterwards, whatever the command does later.

// maxQueued bounds the commands the autopipeliner holds, sent or not,
// including those whose callers stopped waiting: past it a call fails
// with ErrAutoPipelineQueueFull instead of growing the queue behind a
// stalled server. Options.queueLimit replaces it in tests.
const maxQueued = 16384

// asyncPipeliner is a go-redis client with a deferred autopipeliner:
// *redis.Client (also a Sentinel failover client) and *redis.ClusterClient.
type asyncPipeliner interface {
	AsyncAutoPipelineWithOptions(*redis.AutoPipelineOptions) (*redis.AutoPipeliner, error)
}

// startFastPath sets s.ap to rdb's deferred autopipeliner, unless
// Options.NoAutoPipeline. The autopipeliner belongs to rdb, which closes
// it: go-redis shares one per client. A client passed in that has none,
// or is closed already, leaves every call on the plain client.
func (s *Service) startFastPath() error {
	if s.opts.NoAutoPipeline {
		return nil
	}
	c, ok := s.rdb.(asyncPipeliner)
	if !ok {
		return nil
	}
	ap, err := c.AsyncAutoPipelineWithOptions(s.fastPathOptions())
	switch {
	case err == nil:
		s.ap = ap
	case s.ownClient:
		return fmt.Errorf("%w: autopipeline: %w", ErrInvalidArgument, err)
	}
	return nil
}

// closeClient closes rdb, which New dialled, waiting for it no longer
// than Options.Timeout. go-redis's Close first tries every command queued
// in the autopipeliner, one batch after another, each with its retries:
// against a stalled server that takes up to 30 seconds. The callers of
// those commands have their answer by then (each is bounded by its ctx
// and Timeout); Close then returns an error, and the client finishes
// closing in the background.
func (s *Service) closeClient() error {
	if s.ap == nil {
		defer close(s.clientClosed)
		return s.rdb.Close()
	}
	done := make(chan error, 1)
	go func() {
		defer close(s.clientClosed)
		done <- s.rdb.Close()
	}()
	t := time.NewTimer(s.opts.Timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("redisservice: close: the client still sends queued commands after %v: %w", s.opts.Timeout, context.DeadlineExceeded)
	}
}

// fastPathOptions returns the autopipeliner's configuration: go-redis's
// default for the deferred face (half-duplex, one ordered batch in flight,
// no flush delay, batches of up to 200 commands), with the queue bounded.
// bench's BenchmarkDefaultPath compares it with raw go-redis and with the
// autopipeliner on or off for every call.
func (s *Service) fastPathOptions() *redis.AutoPipelineOptions {
	cfg := redis.DefaultAutoPipelineOptions()
	cfg.MaxQueuedCommands = maxQueued
	if s.opts.queueLimit > 0 {
		cfg.MaxQueuedCommands = s.opts.queueLimit
	}
	return cfg
}

// process sends cmd and waits for its reply, no longer than ctx allows.
// It returns cmd's error; after a ctx error the caller must not read cmd,
// whose reply may still be on its way.
func (s *Service) process(ctx context.Context, cmd redis.Cmder) error {
	return s.processOn(ctx, s.rdb, s.ap, cmd)
}

// processNode is process on node, a cluster's node client (the local
// tier reads from the master it tracks), through that node's own
// autopipeliner.
func (s *Service) processNode(ctx context.Context, node *redis.Client, cmd redis.Cmder) error {
	return s.processOn(ctx, node, s.nodePipeliner(node), cmd)
}

// nodePipeliner returns node's deferred autopipeliner, or nil when the
// Service uses none.
func (s *Service) nodePipeliner(node *redis.Client) *redis.AutoPipeliner {
	if s.ap == nil {
		return nil
	}
	// go-redis keeps one per node client, and closes it with the node.
	ap, _ := node.AsyncAutoPipelineWithOptions(s.fastPathOptions())
	return ap
}

// processOn is process on rdb and its autopipeliner ap, nil for none.
func (s *Service) processOn(ctx context.Context, rdb redis.UniversalClient, ap *redis.AutoPipeliner, cmd redis.Cmder) error {
	if ap == nil {
		return rdb.Process(ctx, cmd)
	}
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	if n == 1 && !s.opts.AutoPipeline {
		// Alone: one round trip on the plain client costs less than a
		// hand-off to the autopipeliner's flusher.
		return rdb.Process(ctx, cmd)
	}
	if ap = s.openPipeliner(rdb, ap); ap == nil {
		return rdb.Process(ctx, cmd)
	}
	return ap.Submit(ctx, cmd).WaitContext(ctx)
}

// openPipeliner returns ap, or when ap is closed while rdb is not, rdb's
// deferred autopipeliner now (go-redis makes a new one), nil when rdb has
// none. The owner of a client passed in may close the autopipeliner
// go-redis shares with them, keeping the client open: its calls must not
// then fail with redis.ErrClosed, nor take Redis for down.
func (s *Service) openPipeliner(rdb redis.UniversalClient, ap *redis.AutoPipeliner) *redis.AutoPipeliner {
	if !ap.IsClosed() {
		return ap
	}
	c, ok := rdb.(asyncPipeliner)
	if !ok {
		return nil
	}
	ap, err := c.AsyncAutoPipelineWithOptions(s.fastPathOptions())
	if err != nil {
		return nil // rdb is closed: its Process says so
	}
	return ap
}

// processAll is process for several commands that go together (Cache's
// GET and PTTL): alone, they are one pipeline on rdb, one round trip of
// their own; with other calls in flight, each goes through ap, nil for
// none, to share round trips with theirs. It returns an error only when
// ctx ended first: the caller must then read none of cmds, whose replies
// may still be on their way. Otherwise each command holds its own reply
// or error, as after a pipeline.
func (s *Service) processAll(ctx context.Context, rdb redis.UniversalClient, ap *redis.AutoPipeliner, cmds ...redis.Cmder) error {
	if ap != nil {
		n := s.inFlight.Add(1)
		defer s.inFlight.Add(-1)
		if ap = s.openPipeliner(rdb, ap); ap != nil && (n > 1 || s.opts.AutoPipeline) {
			var buf [4]redis.AutoFuture
			futures := buf[:0]
			for _, cmd := range cmds {
				futures = append(futures, ap.Submit(ctx, cmd))
			}
			for _, f := range futures {
				if err := f.WaitContext(ctx); err != nil && err == ctx.Err() { //nolint:errorlint // WaitContext returns ctx.Err() itself
					return err
				}
			}
			return nil
		}
	}
	p := rdb.Pipeline()
	for _, cmd := range cmds {
		_ = p.Process(ctx, cmd)
	}
	_, _ = p.Exec(ctx) // each command holds its error
	return nil
}

// The commands of the fast path, built as go-redis's typed methods build
// them.

func getCmd(ctx context.Context, key string) *redis.StringCmd {
	return redis.NewStringCmd(ctx, "get", key)
}

// setCmd returns SET key value with o's options: PX for a TTL that is not
// a whole number of seconds, EX otherwise.
func setCmd(ctx context.Context, key string, value any, o setOptions) *redis.StatusCmd {
	args := make([]any, 3, 6)
	args[0], args[1], args[2] = "set", key, value
	switch {
	case o.ttl <= 0:
	case o.ttl%time.Second != 0:
		args = append(args, "px", int64(o.ttl/time.Millisecond))
	default:
		args = append(args, "ex", int64(o.ttl/time.Second))
	}
	if o.keepTTL {
		args = append(args, "keepttl")
	}
	switch {
	case o.nx:
		args = append(args, "nx")
	case o.xx:
		args = append(args, "xx")
	}
	return redis.NewStatusCmd(ctx, args...)
}
