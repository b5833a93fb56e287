package redisservice

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// A session lives at its own key, "session:<id>". This file checks ids
// and reads, decodes and deletes sessions by id; the calls that make up
// the public API build on it.

// maxSessionIDLen bounds session ids; NewSessionID makes 43 characters.
const maxSessionIDLen = 256

// validSessionID reports whether id is 1 to 256 URL-unreserved characters
// (A-Z a-z 0-9 - . _ ~): wider than NewSessionID's own ids (43
// characters), so that the original service's ids pass. Every session
// call refuses anything else with ErrInvalidKey before Redis is asked.
func validSessionID(id string) bool {
	if id == "" || len(id) > maxSessionIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '~':
		default:
			return false
		}
	}
	return true
}

// readSession GETs the stored session id.
func (s *Service) readSession(ctx context.Context, op, id string) ([]byte, bool, error) {
	b, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) ([]byte, error) {
		cmd := getCmd(ctx, s.key(sessionKey(id)))
		if err := s.process(ctx, cmd); err != nil {
			return nil, err
		}
		return cmd.Bytes()
	})
	return lookup(s, b, err)
}

// readSessionTTL reads a session and its remaining TTL (-1: none) in one
// pipelined round trip; both commands address one key, so one node.
func (s *Service) readSessionTTL(ctx context.Context, op, id string) ([]byte, time.Duration, bool, error) {
	key := s.key(sessionKey(id))
	var get *redis.StringCmd
	var pttl *redis.DurationCmd
	_, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (struct{}, error) {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			get = p.Get(ctx, key)
			pttl = p.PTTL(ctx, key)
			return nil
		})
		return struct{}{}, err
	})
	if err != nil && err != redis.Nil { //nolint:errorlint // call returns redis.Nil unwrapped
		return nil, 0, false, err
	}
	raw, err := get.Bytes()
	raw, found, err := lookup(s, raw, err)
	switch ttl := pttl.Val(); {
	case !found:
		return nil, 0, false, err
	case ttl == -1: // go-redis's value for "no TTL"
		return raw, 0, true, nil
	case ttl <= 0: // expired between the two commands
		return nil, 0, false, nil
	default:
		return raw, ttl, true, nil
	}
}

// readSessions GETs the sessions ids, pipelined, and returns those that
// exist by id.
func (s *Service) readSessions(ctx context.Context, op string, ids []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	_, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, s.getEach(ctx, s.rdb, ids, func(id string) string { return s.key(sessionKey(id)) }, out)
	})
	return out, err
}

// getEach GETs the keys named by ids through c, pipelined, into out by
// id. Missing keys, and keys that are not strings, are left out.
func (s *Service) getEach(ctx context.Context, c redis.UniversalClient, ids []string, key func(string) string, out map[string][]byte) error {
	cmds := make([]*redis.StringCmd, len(ids))
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.Get(ctx, key(id))
		}
		return nil
	})
	for i, cmd := range cmds {
		b, cerr := cmd.Bytes()
		var rerr redis.Error
		switch {
		case cerr == nil:
			out[ids[i]] = b
		case cerr == redis.Nil || errors.As(cerr, &rerr): //nolint:errorlint // redis.Nil comes unwrapped
		default:
			return cerr
		}
	}
	var rerr redis.Error
	if err == redis.Nil || errors.As(err, &rerr) { //nolint:errorlint // redis.Nil comes unwrapped
		return nil // a missing or WRONGTYPE key, left out above
	}
	return err
}

// decodeSession splits and decodes a stored session; its failure, with
// ErrDecode, is counted and logged.
func (s *Service) decodeSession(ctx context.Context, op string, raw []byte) (sessionDoc, SessionData, error) {
	doc, err := parseSessionDoc(raw)
	var data SessionData
	if err == nil {
		data, err = doc.data()
	}
	if err != nil {
		return sessionDoc{}, SessionData{}, s.fail(ctx, op, sessionDisplayKey, fmt.Errorf("%w: %w", ErrDecode, err))
	}
	return doc, data, nil
}

// sessionEnded reports whether the session has reached its absolute end:
// the stored expiresAtMs, or CreatedAt plus the SessionMaxLifetime set
// now, whichever comes first. The touch script applies the same rule.
func (s *Service) sessionEnded(doc *sessionDoc, data SessionData) bool {
	now := s.opts.Now()
	if end := doc.end(); !end.IsZero() && end.UnixMilli() <= now.UnixMilli() {
		return true
	}
	life := s.opts.SessionMaxLifetime
	return life > 0 && !data.CreatedAt.IsZero() && data.CreatedAt.UnixMilli()+life.Milliseconds() <= now.UnixMilli()
}

// delSessions deletes the sessions ids with deleteKeys (one round trip,
// one per node on Redis Cluster) and returns how many existed; errors and
// logs name them sessionDisplayKey.
func (s *Service) delSessions(ctx context.Context, op string, ids []string) (int64, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.key(sessionKey(id))
	}
	return call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (int64, error) {
		return s.deleteKeys(ctx, false, keys)
	})
}

// pipelineSessions sends one command per session id, made by cmd from
// the session's key, in one pipelined round trip (one per node on Redis
// Cluster), and returns them in the order of ids.
func pipelineSessions[C redis.Cmder](ctx context.Context, s *Service, op string, ids []string, cmd func(context.Context, redis.Pipeliner, string) C) ([]C, error) {
	cmds := make([]C, len(ids))
	_, err := call(s, ctx, op, sessionDisplayKey, func(ctx context.Context) (struct{}, error) {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = cmd(ctx, p, s.key(sessionKey(id)))
			}
			return nil
		})
		return struct{}{}, err
	})
	return cmds, err
}

// sessionsExist reports, by id, whether the sessions ids exist: one
// pipelined round trip, one per node on Redis Cluster.
func (s *Service) sessionsExist(ctx context.Context, op string, ids []string) (map[string]bool, error) {
	cmds, err := pipelineSessions(ctx, s, op, ids, func(ctx context.Context, p redis.Pipeliner, key string) *redis.IntCmd {
		return p.Exists(ctx, key)
	})
	if err != nil {
		return nil, err
	}
	live := make(map[string]bool, len(ids))
	for i, cmd := range cmds {
		live[ids[i]] = cmd.Val() > 0
	}
	return live, nil
}
