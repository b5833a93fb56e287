package redisservice

import (
	"context"
	"encoding"
	"fmt"
	"net"
	"reflect"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// NoExpiry and KeyMissing are the special results of [Service.TTL].
const (
	NoExpiry   time.Duration = -1 // the key exists and has no TTL
	KeyMissing time.Duration = -2 // there is no such key
)

// Set stores value at key with one SET command. value is anything
// go-redis can write (see [Writable values]); use [Service.SetJSON] for
// structs. With NX or XX it reports whether the condition held and the
// value was written; otherwise it reports true on success. Invalid
// options and values fail with [ErrInvalidTTL] or [ErrInvalidArgument]
// before anything is sent. On error it returns false.
//
// [Writable values]: https://pkg.go.dev/github.com/vevurn/redisservice#hdr-Writable_values
func (s *Service) Set(ctx context.Context, key string, value any, opts ...SetOption) (bool, error) {
	const op = "set"
	if err := s.checkWriteKey(key); err != nil {
		return false, invalid(op, key, err)
	}
	o, err := buildSetOptions(opts)
	if err != nil {
		return false, invalid(op, key, err)
	}
	if value, err = writable(value); err != nil {
		return false, invalid(op, key, err)
	}
	return s.set(ctx, op, key, value, o)
}

// checkWriteKey accepts a key that a caller may write or delete: not
// empty, and not reserved unless Options.AllowReservedKeys.
func (s *Service) checkWriteKey(k string) error {
	switch {
	case k == "":
		return ErrInvalidKey
	case !s.opts.AllowReservedKeys && reservedKey(k):
		return fmt.Errorf("%w: %s… is reserved for the Service's own keys (Options.AllowReservedKeys)", ErrInvalidKey, k[:strings.IndexByte(k, ':')+1])
	}
	return nil
}

// writable returns value as go-redis will write it, or an error matching
// ErrInvalidArgument for a value go-redis cannot write. It accepts what
// go-redis's protocol writer accepts: nil (written as ""), string,
// []byte, the integer, float and bool types and pointers to them,
// time.Time, time.Duration and net.IP as they are, and an
// [encoding.BinaryMarshaler], which it marshals here so that its failure
// fails this call alone. Checking before anything is queued matters in
// the autopipeliner, where go-redis writes the commands of many callers
// at once and one unwritable value would fail them all.
func writable(value any) (any, error) {
	switch v := value.(type) {
	case nil, string, *string, []byte,
		int, *int, int8, *int8, int16, *int16, int32, *int32, int64, *int64,
		uint, *uint, uint8, *uint8, uint16, *uint16, uint32, *uint32, uint64, *uint64, uintptr, *uintptr,
		float32, *float32, float64, *float64, bool, *bool,
		time.Time, *time.Time, time.Duration, *time.Duration, net.IP:
		return value, nil
	case encoding.BinaryMarshaler:
		if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.IsNil() {
			return nil, fmt.Errorf("%w: nil %T", ErrInvalidArgument, v)
		}
		b, err := v.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("%w: %T: MarshalBinary: %w", ErrInvalidArgument, v, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: cannot write a %T (use SetJSON, or implement encoding.BinaryMarshaler)", ErrInvalidArgument, value)
}

// set runs one SET with validated options and reports whether it wrote.
func (s *Service) set(ctx context.Context, op, key string, value any, o setOptions) (bool, error) {
	_, err := call(s, ctx, op, key, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, s.process(ctx, setCmd(ctx, s.key(key), value, o))
	})
	if err == redis.Nil { //nolint:errorlint // NX or XX not met
		return false, nil
	}
	return err == nil, err
}

// Get returns the string at key and whether it was found. A missing key
// is "", false, nil. On error it returns "", false.
func (s *Service) Get(ctx context.Context, key string) (string, bool, error) {
	const op = "get"
	if key == "" {
		return "", false, invalid(op, key, ErrInvalidKey)
	}
	v, err := call(s, ctx, op, key, func(ctx context.Context) (string, error) {
		cmd := getCmd(ctx, s.key(key))
		if err := s.process(ctx, cmd); err != nil {
			return "", err
		}
		return cmd.Val(), nil
	})
	return lookup(s, v, err)
}

// lookup turns call's result for a read into (value, found, err),
// counting the hit or miss.
func lookup[T any](s *Service, v T, err error) (T, bool, error) {
	switch err {
	case nil:
		s.found(true)
		return v, true, nil
	case redis.Nil: //nolint:errorlint // call returns redis.Nil unwrapped
		s.found(false)
		return v, false, nil
	}
	return v, false, err
}

// Exists reports whether key exists. On error it returns false.
func (s *Service) Exists(ctx context.Context, key string) (bool, error) {
	const op = "exists"
	if key == "" {
		return false, invalid(op, key, ErrInvalidKey)
	}
	n, err := call(s, ctx, op, key, func(ctx context.Context) (int64, error) {
		cmd := redis.NewIntCmd(ctx, "exists", s.key(key))
		if err := s.process(ctx, cmd); err != nil {
			return 0, err
		}
		return cmd.Val(), nil
	})
	return n > 0, err
}

// Expire sets key's time to live to ttl, with millisecond precision, and
// reports whether the key exists. A ttl below one millisecond, zero or
// negative fails with [ErrInvalidTTL] and leaves the key as it was (Redis
// itself would delete it). On error it returns false.
func (s *Service) Expire(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	const op = "expire"
	if err := s.checkWriteKey(key); err != nil {
		return false, invalid(op, key, err)
	}
	if err := checkTTL(ttl); err != nil {
		return false, invalid(op, key, err)
	}
	return call(s, ctx, op, key, func(ctx context.Context) (bool, error) {
		cmd := redis.NewBoolCmd(ctx, "pexpire", s.key(key), int64(ttl/time.Millisecond))
		if err := s.process(ctx, cmd); err != nil {
			return false, err
		}
		return cmd.Val(), nil
	})
}

// TTL returns key's remaining time to live with millisecond precision,
// [NoExpiry] for a key without one and [KeyMissing] for a missing key. On
// error it returns KeyMissing.
func (s *Service) TTL(ctx context.Context, key string) (time.Duration, error) {
	const op = "ttl"
	if key == "" {
		return KeyMissing, invalid(op, key, ErrInvalidKey)
	}
	d, err := call(s, ctx, op, key, func(ctx context.Context) (time.Duration, error) {
		cmd := redis.NewDurationCmd(ctx, time.Millisecond, "pttl", s.key(key))
		if err := s.process(ctx, cmd); err != nil {
			return 0, err
		}
		return cmd.Val(), nil
	})
	if err != nil {
		return KeyMissing, err
	}
	return d, nil
}
