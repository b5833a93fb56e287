// Package scsstore is a session store for [github.com/alexedwards/scs/v2]
// on a [redisservice.Service]: scs's sessions then live in the Service's
// Redis (single node, Sentinel or Cluster, TLS) with its key prefix, time
// bounds, error wrapping, logging and statistics.
//
//	store := scsstore.New(svc)
//	sessions := scs.New()
//	sessions.Store = store
//	http.ListenAndServe(addr, sessions.LoadAndSave(mux))
//
// A [Store] implements scs.Store, scs.CtxStore, scs.IterableStore and
// scs.IterableCtxStore, and is safe for concurrent use. Each session is one
// Redis string at <KeyPrefix><prefix><token> (by default
// "scs:session:<token>") holding scs's encoded data, with a time to live
// in milliseconds that ends at the session's expiry.
package scsstore

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/alexedwards/scs/v2"
	"github.com/redis/go-redis/v9"
	"github.com/vevurn/redisservice"
)

// Store implements the store interfaces of scs, with and without a context.
var (
	_ scs.Store            = (*Store)(nil)
	_ scs.CtxStore         = (*Store)(nil)
	_ scs.IterableStore    = (*Store)(nil)
	_ scs.IterableCtxStore = (*Store)(nil)
)

// DefaultPrefix is the key prefix of [New]'s store, after the Service's own
// [redisservice.Options.KeyPrefix].
const DefaultPrefix = "scs:session:"

// maxTTL is the longest time to live CommitCtx sets: the largest Duration
// in whole milliseconds.
const maxTTL = time.Duration(math.MaxInt64) / time.Millisecond * time.Millisecond

// scanCount is the COUNT hint of each SCAN step of [Store.AllCtx].
const scanCount = 1000

// Store is an scs session store on a [redisservice.Service]. Use [New] or
// [NewWithPrefix]; the zero value is not usable. It never closes the
// Service.
type Store struct {
	svc    *redisservice.Service
	prefix string
}

// New returns a Store keeping sessions under [DefaultPrefix].
func New(svc *redisservice.Service) *Store { return NewWithPrefix(svc, DefaultPrefix) }

// NewWithPrefix returns a Store keeping sessions under prefix (after the
// Service's own key prefix). Give each scs.SessionManager sharing a
// Service a prefix of its own: [Store.AllCtx] returns every session under
// the prefix. The Service reserves [DefaultPrefix] (see
// [redisservice.Options.AllowReservedKeys]): its Set, Del, InvalidatePattern
// and the like cannot touch those sessions. Another prefix is not reserved.
func NewWithPrefix(svc *redisservice.Service, prefix string) *Store {
	return &Store{svc: svc, prefix: prefix}
}

// displayKey stands for a session's key in errors and logs: a token is a
// bearer secret.
const displayKey = "<redacted>"

// FindCtx returns the data of the session token, with one GET. An unknown
// or expired token, and an empty one, is nil, false, nil. On error (Redis
// unreachable, the Service closed, the call's time bound exceeded) it
// returns nil, false and the Service's wrapped error, which never contains
// the token.
func (st *Store) FindCtx(ctx context.Context, token string) ([]byte, bool, error) {
	if token == "" {
		return nil, false, nil
	}
	var b []byte
	err := st.svc.Run(ctx, "scs.find", st.prefix+displayKey, func(ctx context.Context, rdb redis.UniversalClient) error {
		var err error
		b, err = rdb.Get(ctx, st.key(token)).Bytes()
		return err
	})
	switch {
	case err == redis.Nil: //nolint:errorlint // Run returns redis.Nil unwrapped
		return nil, false, nil
	case err != nil:
		return nil, false, err
	}
	return b, true, nil
}

// CommitCtx stores b as the data of the session token until expiry, with
// one SET that replaces any earlier data and time to live. The time to
// live is expiry minus the local time, in whole milliseconds, rounded up,
// and at most the largest time.Duration (about 292 years) for an expiry
// further away; an expiry already past deletes the session instead. An
// empty token fails with [redisservice.ErrInvalidKey].
func (st *Store) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) error {
	const op = "scs.commit"
	if token == "" {
		return fmt.Errorf("scsstore: commit: empty token: %w", redisservice.ErrInvalidKey)
	}
	ttl := time.Until(expiry)
	if ttl <= 0 {
		return st.DeleteCtx(ctx, token)
	}
	// PX in whole milliseconds, never shorter than asked. time.Until
	// saturates at the largest Duration: round down there, not over.
	ttl = min(ttl, maxTTL-time.Millisecond+1)
	ttl = (ttl + time.Millisecond - 1).Truncate(time.Millisecond)
	return st.svc.Run(ctx, op, st.prefix+displayKey, func(ctx context.Context, rdb redis.UniversalClient) error {
		return rdb.Set(ctx, st.key(token), b, ttl).Err()
	})
}

// DeleteCtx removes the session token, with one DEL. An unknown or empty
// token is not an error.
func (st *Store) DeleteCtx(ctx context.Context, token string) error {
	if token == "" {
		return nil
	}
	return st.svc.Run(ctx, "scs.delete", st.prefix+displayKey, func(ctx context.Context, rdb redis.UniversalClient) error {
		return rdb.Del(ctx, st.key(token)).Err()
	})
}

// AllCtx returns the data of every live session under the store's prefix,
// by token; never nil. It walks the keyspace with SCAN on every master of
// a Redis Cluster (or on the one server otherwise) and reads the values
// with pipelined GETs, so it costs about one round trip per 1000 keys in
// the database plus one per master for the values. Sessions that expire
// or are deleted during the walk may be missing; ones created during it
// may or may not be included. The whole walk is one call bounded by
// [redisservice.Options.Timeout] unless ctx has a deadline of its own:
// give ctx a longer deadline for a large database. On error it returns an
// empty map and the error.
func (st *Store) AllCtx(ctx context.Context) (map[string][]byte, error) {
	full := st.svc.Key(st.prefix)
	match := redisservice.EscapePattern(full) + "*"
	all := make(map[string][]byte)
	var mu sync.Mutex // guards all: the masters of a cluster are walked concurrently
	err := st.svc.Run(ctx, "scs.all", st.prefix+"*", func(ctx context.Context, rdb redis.UniversalClient) error {
		walk := func(ctx context.Context, node redis.UniversalClient) error {
			var cursor uint64
			for {
				keys, next, err := node.Scan(ctx, cursor, match, scanCount).Result()
				if err != nil {
					return err
				}
				vals, err := readValues(ctx, rdb, keys)
				if err != nil {
					return err
				}
				mu.Lock()
				for k, v := range vals {
					all[k[len(full):]] = v
				}
				mu.Unlock()
				if cursor = next; cursor == 0 {
					return nil
				}
			}
		}
		if c, ok := rdb.(*redis.ClusterClient); ok {
			return c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return walk(ctx, n) })
		}
		return walk(ctx, rdb)
	})
	if err != nil {
		return map[string][]byte{}, err
	}
	return all, nil
}

// readValues GETs keys in one pipeline through rdb, which routes each key
// to its node on a cluster, and returns the values by key. A key that
// expired or was deleted since the SCAN is left out.
func readValues(ctx context.Context, rdb redis.UniversalClient, keys []string) (map[string][]byte, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Get(ctx, k)
		}
		return nil
	})
	if err != nil && err != redis.Nil { //nolint:errorlint // Pipelined returns the first command's error as is
		return nil, err
	}
	vals := make(map[string][]byte, len(keys))
	for i, cmd := range cmds {
		b, err := cmd.Bytes()
		switch {
		case err == redis.Nil: //nolint:errorlint // expired or deleted since the SCAN
		case err != nil:
			return nil, err
		default:
			vals[keys[i]] = b
		}
	}
	return vals, nil
}

// Find is [Store.FindCtx] with context.Background(), bounded by the
// Service's Timeout.
func (st *Store) Find(token string) ([]byte, bool, error) {
	return st.FindCtx(context.Background(), token)
}

// Commit is [Store.CommitCtx] with context.Background(), bounded by the
// Service's Timeout.
func (st *Store) Commit(token string, b []byte, expiry time.Time) error {
	return st.CommitCtx(context.Background(), token, b, expiry)
}

// Delete is [Store.DeleteCtx] with context.Background(), bounded by the
// Service's Timeout.
func (st *Store) Delete(token string) error {
	return st.DeleteCtx(context.Background(), token)
}

// All is [Store.AllCtx] with context.Background(), bounded by the
// Service's Timeout.
func (st *Store) All() (map[string][]byte, error) {
	return st.AllCtx(context.Background())
}

// key returns the Redis key of token: the Service's key prefix, the
// store's, then the token.
func (st *Store) key(token string) string { return st.svc.Key(st.prefix + token) }
